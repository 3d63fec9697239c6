import multiprocessing as mp
from pathlib import Path

import pytest

from traitwatch.errors import StoreError
from traitwatch.store import CheckpointRow, GenerationRow, JudgmentRow, Store, StudyLock, content_key


def test_content_key_is_stable_and_sensitive() -> None:
    assert content_key("a", 1, {"x": [1, 2]}) == content_key("a", 1, {"x": [1, 2]})
    assert content_key("a", 1) != content_key("a", 2) and len(content_key("x")) == 32


def _gen(key: str, step: int = 0) -> GenerationRow:
    return GenerationRow(key, "r", step, "s", "q1", 0, "Q?", "A.", 3, "stop", {"p": -1.5}, "h")


def test_store_roundtrip_and_idempotent_inserts(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        st.upsert_run(run_id="r", fingerprint="f", domain="d", level="mild", seed=0, model="m", dataset_sha="x",
                      n_train=10, n_heldout=2, total_steps=4, info={})
        with pytest.raises(StoreError, match="different settings"):
            st.upsert_run(run_id="r", fingerprint="other", domain="d", level="mild", seed=0, model="m", dataset_sha="x",
                          n_train=10, n_heldout=2, total_steps=4, info={})
        st.add_checkpoint(CheckpointRow("r", 0, "/p", "sha", None, 2.0, 0.0, 0, 0.1))
        assert st.add_generations([_gen("g1"), _gen("g2", 2)]) == 2
        assert st.add_generations([_gen("g1")]) == 0
        assert st.existing("generations", "gen_key", ["g1", "g3"]) == {"g1"}
        j = JudgmentRow("j1", "check", "check:v1", "t", "sh", "ph", 100.0, None, "checker:x", {"a": 1}, 5, 1, 0.01)
        st.add_judgments([j], [("g1", "check", "t", "j1"), ("g2", "check", "t", "j1")])
        st.add_judgments([j], [("g1", "check", "t", "j1")])
        assert len(st.judgments()) == 1 and st.linked("check") == {("g1", "t"): "j1", ("g2", "t"): "j1"}
        rows = st.scores(settings_hash="h")
        assert [(r.step, r.score) for r in rows] == [(0, 100.0), (2, 100.0)]
        assert st.spend()["check"]["cost_usd"] == pytest.approx(0.01)
        files = st.export(tmp_path / "exp")
        assert {f.name for f in files} >= {"generations.csv", "judgments.csv"}
        assert (tmp_path / "exp" / "generations.csv").read_text().count("\n") == 3


def test_readonly_store_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no study store"):
        Store(tmp_path / "missing.sqlite", readonly=True)


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    # a file where a folder should be: fails for root too (permission bits do not)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open the study store"):
        Store(blocker / "sub" / "s.sqlite")


def _hold(folder: str, ready: "mp.synchronize.Event", release: "mp.synchronize.Event") -> None:
    with StudyLock(Path(folder)):
        ready.set()
        release.wait(10)


def test_second_process_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(StoreError) as err:
            with StudyLock(tmp_path):
                pass
        assert f"pid {p.pid}" in str(err.value) and "in use" in str(err.value)
    finally:
        release.set()
        p.join(10)
    with StudyLock(tmp_path):  # released when the holder exits
        pass
