"""`traitwatch export --format inspect`: Inspect AI logs that hold exactly what the store holds.

Every log is read back with inspect_ai's own reader and compared with the store: one sample per
stored answer, the question and answer text unchanged, every judge's score (and its raw output
and reason) per trait, the run and step of each sample, the study's provenance. The export runs
on the shared completed tiny study into a folder of its own (the study is not changed); tests
that change the store take a copy.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 11):  # the dev extra installs inspect-ai only where it runs
    pytest.skip("inspect-ai needs Python 3.11+", allow_module_level=True)

from inspect_ai.log import EvalLog, read_eval_log
from typer.testing import CliRunner

from tiny import TinyStudy
from traitwatch.cli import app
from traitwatch.config import load_study
from traitwatch.pipeline import StudyContext
from traitwatch.store import Store

runner = CliRunner()


def _export(study: TinyStudy, out: Path) -> str:
    res = runner.invoke(app, ["export", str(study.yaml), "--format", "inspect", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return res.output


def _read_logs(out: Path) -> dict[str, EvalLog]:
    """Every log under ``out`` by its path relative to ``out``, samples and all."""
    return {p.relative_to(out).as_posix(): read_eval_log(p.as_posix()) for p in sorted(out.rglob("*.eval"))}


def _settings_hash(study: TinyStudy, store: Store) -> str:
    return str(StudyContext(load_study(study.yaml)).settings_hash(store))


@dataclass(frozen=True)
class Exported:
    study: TinyStudy
    out: Path
    logs: dict[str, EvalLog]
    output: str


@pytest.fixture(scope="module")
def exported(completed_tiny_study: TinyStudy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """The completed tiny study exported once (through the CLI) and read back."""
    out = tmp_path_factory.mktemp("inspect-logs")
    output = _export(completed_tiny_study, out)
    yield Exported(completed_tiny_study, out, _read_logs(out), output)


def _same_score(value: Any, stored: float | None) -> bool:
    if stored is None:
        return isinstance(value, float) and math.isnan(value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == stored


def test_one_log_per_checkpoint_with_every_answer(exported: Exported) -> None:
    with Store(exported.study.out / "study.sqlite", readonly=True) as store:
        gens = store.generations(settings_hash=_settings_hash(exported.study, store))
    checkpoints = sorted({(g.run_id, g.step) for g in gens})
    assert sorted(exported.logs) == [f"{run}/step_{step:06d}.eval" for run, step in checkpoints]
    assert sum(len(log.samples or []) for log in exported.logs.values()) == len(gens)
    assert f"{len(checkpoints)} written, 0 unchanged, 0 removed ({len(gens)} answers)" in exported.output
    assert "inspect view --log-dir" in exported.output

    by_key = {g.gen_key: g for g in gens}
    for name, log in exported.logs.items():
        assert log.status == "success" and log.samples
        run_id, step = name.split("/")[0], int(name.split("step_")[1][:6])
        assert log.eval.model == f"{run_id}/step_{step:06d}" and log.eval.task_args["step"] == step
        assert len({(s.id, s.epoch) for s in log.samples}) == len(log.samples)
        for s in log.samples:
            g = by_key[str(s.uuid)]
            assert (s.input, s.output.completion, s.messages[-1].text) == (g.question, g.answer, g.answer)
            assert s.id == f"{g.suite}/{g.question_id}" and s.epoch == g.sample + 1
            assert s.metadata["run_id"] == g.run_id == run_id and s.metadata["step"] == g.step == step
            assert s.metadata["domain"] and s.metadata["level"] in ("normal", "strong") and s.metadata["seed"] == 0
            assert s.output.stop_reason == {"stop": "stop", "length": "max_tokens"}[g.finish]


def test_scores_per_judge_and_trait_equal_the_store(exported: Exported) -> None:
    with Store(exported.study.out / "study.sqlite", readonly=True) as store:
        rows = store.answer_scores(settings_hash=_settings_hash(exported.study, store))
        gen_keys = {(g.run_id, g.step, g.suite, g.question_id, g.sample): g.gen_key for g in store.generations()}
        judgments = {j.judgment_key: j for j in store.judgments()}
        links = {(r["gen_key"], r["judge"], r["trait"]): r["judgment_key"] for r in store.conn.execute("SELECT * FROM scores")}
    samples = {str(s.uuid): s for log in exported.logs.values() for s in log.samples or []}
    assert sum(len(s.scores or {}) for s in samples.values()) == len(rows)
    judges = set()
    for r in rows:
        key = gen_keys[(r["run_id"], r["step"], r["suite"], r["question_id"], r["sample"])]
        score = (samples[key].scores or {})[f"{r['judge']}/{r['trait']}"]
        assert _same_score(score.value, r["score"]), (r, score.value)
        j = judgments[links[(key, r["judge"], r["trait"])]]
        meta = score.metadata or {}
        assert (meta["judge"], meta["trait"], meta["score"], meta["reason"]) == (r["judge"], r["trait"], j.score, j.reason)
        assert (meta["method"], meta["raw"]) == (j.method, j.raw)
        assert meta["judge_identity"] == j.judge_identity and score.explanation == j.reason and score.answer == r["answer"]
        judges.add(r["judge"])
    assert judges == {"check", "llm"}
    # the local judge's score distribution is there, as stored
    llm = next(s for s in samples.values() if "llm/wrong_answer" in (s.scores or {})).scores["llm/wrong_answer"]  # type: ignore[index]
    assert llm.metadata and llm.metadata["raw"]["distribution"]

    # each log's header: mean per judge/trait over its checkpoint's scored answers
    for log in exported.logs.values():
        assert log.results is not None and log.samples
        for es in log.results.scores:
            xs = [s.scores[es.name].value for s in log.samples if s.scores and es.name in s.scores]
            xs = [float(x) for x in xs if not (isinstance(x, float) and math.isnan(x))]  # type: ignore[arg-type]
            assert es.scored_samples == len(xs)
            assert math.isnan(es.metrics["mean"].value) if not xs else es.metrics["mean"].value == pytest.approx(sum(xs) / len(xs))


def test_provenance_is_in_every_log(exported: Exported) -> None:
    import traitwatch

    with Store(exported.study.out / "study.sqlite", readonly=True) as store:
        settings_hash = _settings_hash(exported.study, store)
        spec_yaml = store.get_meta("spec")
        runs = {r["run_id"]: r for r in store.runs()}
        adapters = {(c.run_id, c.step): c.adapter_sha for c in store.checkpoints()}
    for log in exported.logs.values():
        meta = log.eval.metadata or {}
        run_id, step = log.eval.task_args["run_id"], log.eval.task_args["step"]
        assert meta["spec"] == spec_yaml and meta["study"] == "tiny" == log.eval.task
        assert meta["settings_hash"] == settings_hash and meta["traitwatch_version"] == traitwatch.__version__
        assert meta["model_identity"] == runs[run_id]["model"] and meta["model"]["identity"]
        assert meta["run_fingerprint"] == runs[run_id]["fingerprint"] and meta["run"]["fingerprint"] == runs[run_id]["fingerprint"]
        assert meta["adapter_sha"] == adapters[(run_id, step)] == log.eval.model_args["adapter_sha"]
        assert log.eval.packages["traitwatch"] == traitwatch.__version__
        assert log.eval.model_generate_config.max_tokens == 6 and log.eval.config.epochs == 2


def test_store_reads_one_checkpoint_at_a_time(completed_tiny_study: TinyStudy) -> None:
    """The export's reader (``Store.answer_checkpoints`` + ``checkpoint_answers``): every answer
    once, grouped by (run, step) in order, each with exactly its score links."""
    with Store(completed_tiny_study.out / "study.sqlite", readonly=True) as store:
        settings_hash = _settings_hash(completed_tiny_study, store)
        gens = store.generations(settings_hash=settings_hash)
        n_links = len(store.answer_scores(settings_hash=settings_hash))
        listed = store.answer_checkpoints(settings_hash=settings_hash)
        batches = [store.checkpoint_answers(run, step, settings_hash=settings_hash) for run, step, _ in listed]
        assert store.checkpoint_answers("no-such-run", 0, settings_hash=settings_hash) is None
    assert [(run, step) for run, step, _ in listed] == sorted({(g.run_id, g.step) for g in gens})
    assert [n for *_, n in listed] == [len(b.generations) for b in batches if b is not None]
    assert sorted(g.gen_key for b in batches if b is not None for g in b.generations) == sorted(g.gen_key for g in gens)
    assert sum(len(links) for b in batches if b is not None for links in b.judgments.values()) == n_links
    for b in batches:
        assert b is not None and set(b.judgments) <= {g.gen_key for g in b.generations}
        assert all(g.run_id == b.run_id and g.step == b.step for g in b.generations)
        for links in b.judgments.values():
            assert [(judge, trait) for judge, trait, _ in links] == sorted((judge, trait) for judge, trait, _ in links)
            assert all(j.judge == judge and j.trait == trait for judge, trait, j in links)


def test_rerun_skips_and_rewrites_the_same_log(exported: Exported, tmp_path: Path) -> None:
    """A second export into the same folder changes nothing; a deleted log comes back the same."""
    out = tmp_path / "logs"
    _export(exported.study, out)
    files = sorted(out.rglob("*.eval"))
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = _export(exported.study, out)
    assert f"0 written, {len(files)} unchanged, 0 removed" in again
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*.eval"))} == stamps

    files[0].unlink()
    assert "1 written" in _export(exported.study, out)
    # the same content as the first export (JSON: NaN compares equal there, and location is left out)
    assert {k: v.model_dump_json() for k, v in _read_logs(out).items()} == {k: v.model_dump_json() for k, v in exported.logs.items()}
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.endswith(".eval")) == []


def test_odd_text_survives_and_only_changed_logs_are_rewritten(tiny_study_copy: TinyStudy, tmp_path: Path) -> None:
    """Markup, control and odd unicode reach the log as stored; a None score is Inspect's unscored."""
    out = tmp_path / "logs"
    _export(tiny_study_copy, out)
    odd_answer = (
        '<script>alert("x")</script> **bold** [link](javascript:alert(1)) {{ x }} ${y} <think>hidden?</think>\n'
        "\u202eevil\u202c zero\u200bwidth e\u0301 \U0001f600 \x00\x07 \t tab \\n \ud7ff \ufeff end"
    )
    odd_question = "# Title\n<b>What</b> is `1+1`? \u00e9\u0300 \u05e9\u05dc\u05d5\u05dd"
    with sqlite3.connect(tiny_study_copy.out / "study.sqlite") as c:
        gen_key, run_id, step = c.execute("SELECT gen_key, run_id, step FROM generations ORDER BY gen_key LIMIT 1").fetchone()
        c.execute("UPDATE generations SET answer=?, question=? WHERE gen_key=?", (odd_answer, odd_question, gen_key))
        jkey = c.execute("SELECT judgment_key FROM scores WHERE gen_key=? AND judge='llm'", (gen_key,)).fetchone()[0]
        c.execute("UPDATE judgments SET score=NULL, reason=? WHERE judgment_key=?", ("too little mass on numbers: 0.2", jkey))
        # the edited answer's log, and those of other answers the edited judgment is linked to (the same text)
        changed = c.execute(
            "SELECT COUNT(DISTINCT g.run_id || '/' || g.step) FROM generations g JOIN scores s ON s.gen_key=g.gen_key"
            " WHERE g.gen_key=? OR s.judgment_key=?",
            (gen_key, jkey),
        ).fetchone()[0]
    total = len(list(out.rglob("*.eval")))
    assert 0 < changed < total
    assert f"{changed} written, {total - changed} unchanged, 0 removed" in _export(tiny_study_copy, out)
    [sample] = [s for s in read_eval_log((out / run_id / f"step_{step:06d}.eval").as_posix()).samples or [] if s.uuid == gen_key]
    assert sample.output.completion == odd_answer and sample.messages[-1].text == odd_answer
    assert sample.input == odd_question and sample.messages[0].text == odd_question
    score = (sample.scores or {})["llm/wrong_answer"]
    assert isinstance(score.value, float) and math.isnan(score.value)
    assert score.reason == score.explanation == "too little mass on numbers: 0.2" and score.answer == odd_answer
    assert score.metadata and score.metadata["score"] is None


def test_logs_of_checkpoints_gone_from_the_store_are_removed(tiny_study_copy: TinyStudy, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    _export(tiny_study_copy, out)
    (out / "notes.txt").write_text("mine")
    with sqlite3.connect(tiny_study_copy.out / "study.sqlite") as c:
        run_id = c.execute("SELECT run_id FROM generations WHERE step=6 LIMIT 1").fetchone()[0]
        c.execute("DELETE FROM generations WHERE run_id=? AND step=6", (run_id,))
    assert "1 removed" in _export(tiny_study_copy, out)
    assert not (out / run_id / "step_000006.eval").exists() and (out / "notes.txt").read_text() == "mine"


def test_run_folders_stay_inside_the_export_folder() -> None:
    from traitwatch.export._inspect import _folder_name

    assert _folder_name("math-strong-s1") == "math-strong-s1"
    for odd in ("..", ".", "", "../../etc", "a/b", "a\\b", "x\x00y"):
        name = _folder_name(odd)
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\x00" not in name, (odd, name)


def test_missing_inspect_ai_is_one_line(completed_tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import traitwatch.export

    monkeypatch.setitem(sys.modules, "inspect_ai", None)  # import inspect_ai -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "traitwatch.export._inspect", raising=False)
    monkeypatch.delattr(traitwatch.export, "_inspect", raising=False)  # else `from . import _inspect` finds it
    res = runner.invoke(app, ["export", str(completed_tiny_study.yaml), "--format", "inspect", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "pip install 'traitwatch[inspect]'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_unknown_format_names_inspect(completed_tiny_study: TinyStudy) -> None:
    res = runner.invoke(app, ["export", str(completed_tiny_study.yaml), "--format", "xml"])
    assert res.exit_code == 2 and "csv, parquet or inspect" in res.output
