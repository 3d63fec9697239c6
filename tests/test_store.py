import copy
import csv
import multiprocessing as mp
import pickle
import sqlite3
from contextlib import closing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from traitwatch.errors import StoreError
from traitwatch.store import CheckpointRow, GenerationRow, JudgmentRow, ScoreColumns, ScoreRow, Store, StudyLock, content_key
from traitwatch.store._db import (
    _ALARM_COLUMNS,
    _CHECKPOINTS,
    _GENERATIONS,
    _JUDGMENTS,
    _LINK_COLUMNS,
    _RUN_COLUMNS,
    _SCHEMA,
)


def test_content_key_is_stable_and_sensitive() -> None:
    assert content_key("a", 1, {"x": [1, 2]}) == content_key("a", 1, {"x": [1, 2]})
    assert content_key("a", 1) != content_key("a", 2) and len(content_key("x")) == 32


def _gen(key: str, step: int = 0) -> GenerationRow:
    return GenerationRow(key, "r", step, "s", "q1", 0, "Q?", "A.", 3, "stop", {"p": -1.5}, "h")


def test_store_roundtrip_and_idempotent_inserts(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        st.upsert_run(
            run_id="r",
            fingerprint="f",
            domain="d",
            level="mild",
            seed=0,
            model="m",
            dataset_sha="x",
            n_train=10,
            n_heldout=2,
            total_steps=4,
            info={},
        )
        with pytest.raises(StoreError, match="different settings"):
            st.upsert_run(
                run_id="r",
                fingerprint="other",
                domain="d",
                level="mild",
                seed=0,
                model="m",
                dataset_sha="x",
                n_train=10,
                n_heldout=2,
                total_steps=4,
                info={},
            )
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


# -- columns by name: every row type round-trips field by field -------------------------------
# Each field gets a value no other field has, so a value written to or read from the wrong
# column fails the comparison.

_CK = CheckpointRow(
    run_id="run-A",
    step=7,
    path="/ckpt/7",
    adapter_sha="adapter-sha",
    train_loss=1.25,
    heldout_loss=2.5,
    learning_rate=3.75e-4,
    tokens_seen=4096,
    elapsed_s=12.125,
)
_GEN = GenerationRow(
    gen_key="gk-1",
    run_id="run-A",
    step=7,
    suite="suite-S",
    question_id="qid-9",
    sample=3,
    question="Question text?",
    answer="Answer text.",
    n_tokens=42,
    finish="length",
    probes={"probe": -1.5},
    settings_hash="settings-h",
)
_JUDGMENT = JudgmentRow(
    judgment_key="jk-1",
    judge="judge-J",
    judge_identity="judge-J:v2",
    trait="trait-T",
    scoring_hash="scoring-h",
    prompt_hash="prompt-h",
    score=61.5,
    reason="reason text",
    method="method-m",
    raw={"raw": [1, 2]},
    input_tokens=17,
    output_tokens=5,
    cost_usd=0.0625,
)
_RUN = dict(
    run_id="run-A",
    fingerprint="fp-1",
    domain="dom-med",
    level="lvl-severe",
    seed=11,
    model="model-x",
    dataset_sha="ds-sha",
    n_train=101,
    n_heldout=23,
    total_steps=47,
    info={"lr": 0.5},
)


def _reordered_schema() -> str:
    """The store's tables (meta aside) with their columns in reverse order; constraints stay last."""
    out = []
    for stmt in _SCHEMA.split(";"):
        stmt = stmt.strip()
        if not stmt.startswith("CREATE TABLE") or "\n" not in stmt:  # indexes, one-line meta
            continue
        head, *body = stmt.splitlines()
        lines = [line.strip().rstrip(",") for line in body[:-1]]  # body[-1] is ")"
        cols = [line for line in lines if not line.startswith("PRIMARY KEY")]
        constraints = [line for line in lines if line.startswith("PRIMARY KEY")]
        out.append(head + "\n" + ",\n".join(cols[::-1] + constraints) + "\n);")
    return "\n".join(out)


def _table_columns(path: Path, table: str) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _stored(path: Path, table: str) -> list[dict[str, Any]]:
    """A table's rows as {column: value}, read with plain sqlite3 (independent of Store's reads)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]


def _open(path: Path, layout: str) -> Store:
    if layout == "reordered":  # tables made before Store's CREATE TABLE IF NOT EXISTS runs
        with closing(sqlite3.connect(path)) as conn:
            conn.executescript(_reordered_schema())
    return Store(path)


def test_reordered_schema_really_reorders(tmp_path: Path) -> None:
    Store(tmp_path / "plain.sqlite").close()
    _open(tmp_path / "rev.sqlite", "reordered").close()
    for table in ("runs", "checkpoints", "generations", "judgments", "scores", "alarms"):
        plain = _table_columns(tmp_path / "plain.sqlite", table)
        assert _table_columns(tmp_path / "rev.sqlite", table) == plain[::-1], table


def test_column_lists_cover_the_schema(tmp_path: Path) -> None:
    Store(tmp_path / "s.sqlite").close()
    expect = {
        "runs": _RUN_COLUMNS,
        "checkpoints": _CHECKPOINTS.columns,
        "generations": _GENERATIONS.columns,
        "judgments": _JUDGMENTS.columns,
        "scores": _LINK_COLUMNS,
        "alarms": _ALARM_COLUMNS,
    }
    for table, cols in expect.items():
        assert sorted(_table_columns(tmp_path / "s.sqlite", table)) == sorted(cols), table


def test_rows_are_slotted_and_frozen() -> None:
    score = ScoreRow(run_id="r", step=0, suite="s", question_id="q", sample=0, judge="j", trait="t", score=1.0)
    for row in (_CK, _GEN, _JUDGMENT, score):
        assert hasattr(type(row), "__slots__") and not hasattr(row, "__dict__")
        with pytest.raises(AttributeError):  # FrozenInstanceError
            setattr(row, "run_id" if hasattr(row, "run_id") else "judgment_key", "changed")
        assert pickle.loads(pickle.dumps(row)) == row and copy.deepcopy(row) == row


@pytest.mark.parametrize("layout", ["schema", "reordered"])
def test_every_row_type_roundtrips_by_column_name(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "s.sqlite"
    with _open(path, layout) as st:
        # runs
        st.upsert_run(**_RUN)  # type: ignore[arg-type]
        assert st.runs() == [_RUN | {"status": "planned"}]
        st.upsert_run(**(_RUN | {"n_train": 202, "n_heldout": 24, "total_steps": 48, "info": {"lr": 0.25}}))  # type: ignore[arg-type]
        st.set_run_status("run-A", "done")
        updated = _RUN | {"n_train": 202, "n_heldout": 24, "total_steps": 48, "info": {"lr": 0.25}, "status": "done"}
        assert st.runs() == [updated]
        assert _stored(path, "runs") == [updated | {"info": '{"lr": 0.25}'}]

        # checkpoints
        st.add_checkpoint(_CK)
        assert st.checkpoints() == [_CK] and st.checkpoints("run-A") == [_CK] and st.checkpoints("other") == []
        assert st.checkpoint_exists("run-A", 7) and not st.checkpoint_exists("run-A", 8)
        [ck] = _stored(path, "checkpoints")
        assert isinstance(ck.pop("created_at"), float) and ck == asdict(_CK)
        moved = replace(_CK, path="/ckpt/7b", heldout_loss=2.75)
        st.add_checkpoint(moved)  # INSERT OR REPLACE
        assert st.checkpoints() == [moved]

        # generations
        assert st.add_generations([_GEN]) == 1 and st.add_generations([_GEN]) == 0
        assert st.generations() == [_GEN]
        assert st.generations(settings_hash="settings-h", run_id="run-A") == [_GEN]
        assert st.generations(settings_hash="other") == [] and st.generations(run_id="other") == []
        [g] = _stored(path, "generations")
        assert isinstance(g.pop("created_at"), float) and g == asdict(_GEN) | {"probes": '{"probe": -1.5}'}
        assert st.existing("generations", "gen_key", ["gk-1", "gk-2"]) == {"gk-1"}

        # judgments and their links
        st.add_judgments([_JUDGMENT], [("gk-1", "judge-J", "trait-T", "jk-1")])
        assert st.judgments() == [_JUDGMENT] and st.judgments(["jk-1", "nope"]) == [_JUDGMENT]
        [j] = _stored(path, "judgments")
        assert isinstance(j.pop("created_at"), float) and j == asdict(_JUDGMENT) | {"raw": '{"raw": [1, 2]}'}
        assert _stored(path, "scores") == [{"gen_key": "gk-1", "judge": "judge-J", "trait": "trait-T", "judgment_key": "jk-1"}]
        assert st.linked("judge-J") == {("gk-1", "trait-T"): "jk-1"}
        assert st.existing("judgments", "judgment_key", ["jk-1", "jk-2"]) == {"jk-1"}
        assert st.spend() == {"judge-J": {"judgments": 1, "input_tokens": 17, "output_tokens": 5, "cost_usd": 0.0625}}

        # scores, joined
        assert st.scores(settings_hash="settings-h") == [
            ScoreRow(run_id="run-A", step=7, suite="suite-S", question_id="qid-9", sample=3, judge="judge-J", trait="trait-T", score=61.5)
        ]
        assert st.answer_scores(settings_hash="settings-h") == [
            dict(
                run_id="run-A",
                domain="dom-med",
                level="lvl-severe",
                seed=11,
                step=7,
                trait="trait-T",
                suite="suite-S",
                question_id="qid-9",
                sample=3,
                judge="judge-J",
                score=61.5,
                answer="Answer text.",
            )
        ]

        # alarms
        assert st.add_alarm("run-A", 7, "judge-J", "trait-T", "detector-D", "message M", {"onset_step": 5, "last_safe_step": 4})
        assert st.add_alarm("run-A", 9, "judge-J", "trait-T", "detector-D", "again"), "stored, never acted on: still to act"
        st.mark_alarm_acted("run-A", "judge-J", "trait-T", "detector-D")
        assert not st.add_alarm("run-A", 9, "judge-J", "trait-T", "detector-D", "again"), "acted on: done"
        [alarm] = st.alarms()
        assert list(alarm) == ["run_id", "step", "judge", "trait", "detector", "message", "created_at", "info", "acted_at"]
        assert isinstance(alarm.pop("created_at"), float) and isinstance(alarm.pop("acted_at"), float)
        assert alarm == dict(
            run_id="run-A",
            step=7,
            judge="judge-J",
            trait="trait-T",
            detector="detector-D",
            message="message M",
            info={"onset_step": 5, "last_safe_step": 4},
        )

        # export writes each value under its own header
        st.export(tmp_path / "exp")
        with (tmp_path / "exp" / "generations.csv").open(newline="", encoding="utf-8") as fh:
            [exported] = list(csv.DictReader(fh))
        assert exported["answer"] == "Answer text." and exported["question_id"] == "qid-9" and exported["n_tokens"] == "42"

    # copying judgments from a shared cache keeps every field but the spend
    with _open(tmp_path / "copy.sqlite", layout) as dest, Store(path, readonly=True) as source:
        assert dest.copy_judgments(["jk-1", "missing"], source) == {"jk-1"}
        assert dest.judgments() == [replace(_JUDGMENT, input_tokens=0, output_tokens=0, cost_usd=0.0)]
        assert dest.spend()["judge-J"]["cost_usd"] == 0.0


def test_answer_scores_keys_values_and_order(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as st:
        for run_id, domain, level, seed in (("run-b", "dom-b", "lvl-b", 2), ("run-a", "dom-a", "lvl-a", 1)):
            st.upsert_run(
                run_id=run_id,
                fingerprint="f",
                domain=domain,
                level=level,
                seed=seed,
                model="m",
                dataset_sha="x",
                n_train=1,
                n_heldout=1,
                total_steps=2,
                info={},
            )
        gens = [
            GenerationRow(f"{run}-{step}-{q}-{s}", run, step, "suite", q, s, "Q?", f"answer {run} {step} {q} {s}", 1, "stop", {}, "h")
            for run in ("run-b", "run-a")
            for step in (2, 0)
            for q in ("q2", "q1")
            for s in (1, 0)
        ]
        gens.append(GenerationRow("other-settings", "run-a", 0, "suite", "q1", 0, "Q?", "not these settings", 1, "stop", {}, "h2"))
        gens.append(GenerationRow("no-run", "run-z", 0, "suite", "q1", 0, "Q?", "run not recorded", 1, "stop", {}, "h"))
        st.add_generations(gens)
        judgments, links = [], []
        for g in gens:
            for judge in ("judge-2", "judge-1"):
                for trait in ("trait-y", "trait-x"):
                    key = f"{g.gen_key}/{judge}/{trait}"
                    score = float(len(links))
                    judgments.append(JudgmentRow(key, judge, judge, trait, "sh", "ph", score, None, "m", {}))
                    links.append((g.gen_key, judge, trait, key))
        st.add_judgments(judgments, links)

        got = st.answer_scores(settings_hash="h")
        scores = st.scores(settings_hash="h")
        assert len(got) == len(scores) == (len(gens) - 1) * 4
        assert all(
            list(d) == ["run_id", "domain", "level", "seed", "step", "trait", "suite", "question_id", "sample", "judge", "score", "answer"]
            for d in got
        )
        order = [(d["run_id"], d["judge"], d["trait"], d["step"], d["question_id"], d["sample"]) for d in got]
        assert order == sorted(order)
        # the same rows as scores(), in the same order, plus the run's design and the answer
        assert [(d["run_id"], d["step"], d["suite"], d["question_id"], d["sample"], d["judge"], d["trait"], d["score"]) for d in got] == [
            (r.run_id, r.step, r.suite, r.question_id, r.sample, r.judge, r.trait, r.score) for r in scores
        ]
        by_key = {(d["run_id"], d["step"], d["question_id"], d["sample"], d["judge"], d["trait"]): d for d in got}
        d = by_key[("run-b", 2, "q1", 0, "judge-1", "trait-x")]
        assert d["domain"] == "dom-b" and d["level"] == "lvl-b" and d["seed"] == 2 and d["answer"] == "answer run-b 2 q1 0"
        assert d["score"] == float(links.index(("run-b-2-q1-0", "judge-1", "trait-x", "run-b-2-q1-0/judge-1/trait-x")))
        assert by_key[("run-a", 0, "q2", 1, "judge-2", "trait-y")]["domain"] == "dom-a"
        assert all(d["answer"] != "not these settings" for d in got)
        orphan = by_key[("run-z", 0, "q1", 0, "judge-1", "trait-x")]  # a generation whose run is not recorded
        assert orphan["domain"] is None and orphan["answer"] == "run not recorded"
        assert st.answer_scores(settings_hash="none") == []


def test_score_columns_equal_scores_row_for_row(tmp_path: Path) -> None:
    """score_columns is scores() as columns: same rows, same order, None scores as NaN, equal
    strings shared (one str per distinct value), compact dtypes; batches join seamlessly."""
    with Store(tmp_path / "s.sqlite") as st:
        gens = [
            GenerationRow(f"{run}-{step}-{suite}-{q}-{s}", run, step, suite, q, s, "Q?", "A.", 1, "stop", {}, "h")
            for run in ("run-b", "run-a") for step in (20, 0, 5) for suite in ("math", "general")
            for q in ("q2", "q10", "q1") for s in (1, 0)
        ]  # fmt: skip
        gens.append(GenerationRow("other", "run-a", 0, "general", "q1", 0, "Q?", "A.", 1, "stop", {}, "h2"))
        st.add_generations(gens)
        judgments, links = [], []
        for i, g in enumerate(gens):
            for judge in ("judge-2", "judge-1"):
                for trait in ("trait-y", "trait-x"):
                    key = f"{g.gen_key}/{judge}/{trait}"
                    score = None if (i + len(links)) % 7 == 0 else float(len(links) % 101) / 3  # some unparseable
                    judgments.append(JudgmentRow(key, judge, judge, trait, "sh", "ph", score, None, "m", {}))
                    links.append((g.gen_key, judge, trait, key))
        st.add_judgments(judgments, links)

        rows = st.scores(settings_hash="h")
        assert any(r.score is None for r in rows) and len(rows) == (len(gens) - 1) * 4
        for batch_size in (1, 7, 1 << 16):
            cols = st.score_columns(settings_hash="h", batch_size=batch_size)
            assert isinstance(cols, ScoreColumns) and len(cols) == len(rows)
            assert cols.to_rows() == rows  # row for row, None <-> NaN
            assert cols.step.dtype == cols.sample.dtype == np.int64 and cols.score.dtype == np.float64
            assert np.isnan(cols.score).sum() == sum(r.score is None for r in rows)
            for name in ("run_id", "suite", "question_id", "judge", "trait"):
                col = getattr(cols, name)
                assert col.dtype == object
                assert len({id(v) for v in col}) == len(set(col))  # one str object per distinct value
        empty = st.score_columns(settings_hash="none")
        assert len(empty) == 0 and empty.to_rows() == st.scores(settings_hash="none") == []


def test_a_store_from_before_alarm_details_gains_the_column(tmp_path: Path) -> None:
    """Stores made before alarms had an info column open, and their old alarms read back."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE alarms (run_id TEXT NOT NULL, step INTEGER NOT NULL, judge TEXT NOT NULL, trait TEXT NOT NULL,"
            " detector TEXT NOT NULL, message TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (run_id, judge, trait, detector))"
        )
        db.execute("INSERT INTO alarms VALUES ('r', 3, 'j', 't', 'd', 'old', 1.0)")
    with Store(path) as st:
        assert st.alarms()[0]["info"] == {} and st.alarms()[0]["message"] == "old"
        assert not st.add_alarm("r", 3, "j", "t", "d", "old"), "an old store's alarms were acted on when stored"
        assert st.add_alarm("r", 4, "j", "t2", "d", "new", {"onset_step": 2})
        assert st.alarms()[1]["info"] == {"onset_step": 2}
