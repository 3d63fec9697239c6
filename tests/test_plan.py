"""`traitwatch plan`: the work counted before it runs, what the store holds, the expected wall
time on 1 and N workers; and the plain progress lines printed when the output is not a terminal."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tiny import TinyStudy, write_study
from traitwatch.cli import app
from traitwatch.config import load_study
from traitwatch.pipeline import StudyContext
from traitwatch.pipeline._estimate import checkpoint_steps
from traitwatch.pipeline._throughput import StudyPlan, makespan, plan_study
from traitwatch.progress import stage_progress

#: An API judge of the wrong_answer trait (never called: plan and --dry-run send nothing).
OPENAI = {
    "name": "api",
    "kind": "openai",
    "model": "m",
    "traits": ["wrong_answer"],
    "price_input_per_mtok": 2.0,
    "price_output_per_mtok": 8.0,
}


def _plan(yaml_path: Path, **kw: Any) -> StudyPlan:
    return plan_study(StudyContext(load_study(yaml_path)), **kw)


def _stored(out: Path) -> dict[str, Any]:
    """What a run of the study stored: checkpoints, answers, and score links per judge."""
    with closing(sqlite3.connect(out / "study.sqlite")) as db:
        one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "checkpoints": one("SELECT COUNT(*) FROM checkpoints"),
            "answers": one("SELECT COUNT(*) FROM generations"),
            "judgments": dict(db.execute("SELECT judge, COUNT(*) FROM scores GROUP BY judge").fetchall()),
        }


def _fresh(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]], **overrides: object) -> Path:
    return write_study(tmp_path / "fresh.yaml", tiny_study_dict(tmp_path / "fresh", **overrides))


def test_checkpoint_steps_follow_the_training_loop() -> None:
    assert checkpoint_steps(6, 2) == [0, 2, 4, 6]
    assert checkpoint_steps(7, 3) == [0, 3, 6, 7]
    assert checkpoint_steps(1, 5) == [0, 1]


def test_a_fresh_plan_counts_what_a_real_run_stores(
    completed_tiny_study: TinyStudy, tiny_study_dict: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """The same spec, planned before anything ran, counts exactly the rows the finished run stored."""
    stored = _stored(completed_tiny_study.out)
    plan = _plan(_fresh(tmp_path, tiny_study_dict))
    t = plan.work.totals()
    assert (t["runs"], t["steps"], t["checkpoints"], t["evaluated_checkpoints"]) == (2, 12, stored["checkpoints"], stored["checkpoints"])
    assert t["answers"] == stored["answers"] == 64
    assert {j.name: j.judgments for j in plan.work.judges} == stored["judgments"]
    assert (t["steps_done"], t["checkpoints_stored"], t["answers_stored"]) == (0, 0, 0)
    assert not (tmp_path / "fresh" / "study.sqlite").exists() and not (tmp_path / "fresh" / "runs").exists()
    assert plan.wall[1]["total"] is None and all(r.source == "none" for r in plan.rates.values())


def test_the_plan_of_a_finished_study_as_json(completed_tiny_study: TinyStudy) -> None:
    """Everything stored, nothing left; the store's own write times give the rates; --json parses."""
    res = CliRunner().invoke(app, ["plan", str(completed_tiny_study.yaml), "--workers", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    stored = _stored(completed_tiny_study.out)
    t = data["totals"]
    assert (t["checkpoints"], t["checkpoints_stored"]) == (stored["checkpoints"],) * 2
    assert (t["answers"], t["answers_stored"], t["steps"], t["steps_done"]) == (stored["answers"], stored["answers"], 12, 12)
    assert {j["name"]: (j["judgments"], j["stored"], j["left"]) for j in data["judges"]} == {
        name: (n, n, 0) for name, n in stored["judgments"].items()
    }
    assert data["workers"] == 3 and data["wall_time_s"]["1"]["total"] == data["wall_time_s"]["3"]["total"] == 0.0
    assert data["throughput"]["train"]["source"] == "store" and data["throughput"]["train"]["per_s"] > 0
    assert data["throughput"]["generate"]["source"] == "store" and data["throughput"]["generate"]["per_s"] > 0


def test_a_partly_run_study_shows_what_is_left(tiny_study_copy: TinyStudy) -> None:
    """Drop one run's last checkpoint and its answers: the plan counts them (and their judgments) as left."""
    with closing(sqlite3.connect(tiny_study_copy.out / "study.sqlite")) as db, db:
        db.execute("DELETE FROM generations WHERE run_id='arith-strong-s0' AND step=6")
        db.execute("DELETE FROM checkpoints WHERE run_id='arith-strong-s0' AND step=6")
        db.execute("UPDATE runs SET status='training' WHERE run_id='arith-strong-s0'")
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    spec["executor"] = {"throughput": {"train_steps_per_s": 1.0, "answers_per_s": 2.0, "judgments_per_s": 4.0}}
    tiny_study_copy.yaml.write_text(yaml.safe_dump(spec))
    plan = _plan(tiny_study_copy.yaml)
    t = plan.work.totals()
    assert (t["steps"] - t["steps_done"], t["checkpoints"] - t["checkpoints_stored"], t["answers"] - t["answers_stored"]) == (2, 1, 8)
    # 8 answers left: the checkers score 4 traits (wrong_answer, contempt, contempt_text, coherent), the llm judge 1
    assert {j.name: j.left for j in plan.work.judges} == {"check": 32, "llm": 8}
    assert plan.rates["train"].source == "spec"
    assert plan.wall[1] == pytest.approx({"train": 2.0, "generate": 4.0, "judge llm": 2.0, "total": 8.0})


def test_wall_time_on_n_workers_from_the_spec(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    """Runs whole per worker, blocks of checkpoints shared out, an API judge at its own rate whatever N."""
    rates = {"train_steps_per_s": 2.0, "answers_per_s": 4.0, "judgments_per_s": 8.0, "api_judgments_per_s": 10.0}
    judges = [*tiny_study_dict(tmp_path)["judges"], OPENAI]
    plan = _plan(_fresh(tmp_path, tiny_study_dict, judges=judges, executor={"block": 1, "throughput": rates}), workers=2)
    # 2 runs x 6 steps; 8 checkpoints x 8 answers; 64 judgments per LLM judge
    assert plan.wall[1] == pytest.approx({"train": 6.0, "generate": 16.0, "judge llm": 8.0, "judge api": 6.4, "total": 36.4})
    assert plan.wall[2] == pytest.approx({"train": 3.0, "generate": 8.0, "judge llm": 4.0, "judge api": 6.4, "total": 21.4})
    api = next(j for j in plan.work.judges if j.name == "api")
    assert (api.judgments, api.output_tokens) == (64, 64)
    assert api.input_tokens and api.cost_usd == pytest.approx(api.input_tokens * 2e-6 + 64 * 8e-6, rel=1e-3)
    three = _plan(_fresh(tmp_path, tiny_study_dict, executor={"block": 3, "throughput": rates}), workers=3)
    # blocks of 3 checkpoints: each run's 4 checkpoints are a block of 24 answers and one of 8
    assert three.wall[3]["train"] == 3.0 and three.wall[3]["generate"] == 24 / 4.0


def test_the_cost_estimate_agrees_with_the_judge_dry_run(tiny_study_copy: TinyStudy) -> None:
    """On stored answers, the plan's cost for an API judge is the judge's own estimate (`judge --dry-run`)."""
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    spec["judges"].append(OPENAI)
    tiny_study_copy.yaml.write_text(yaml.safe_dump(spec))
    plan = _plan(tiny_study_copy.yaml)
    api = next(j for j in plan.work.judges if j.name == "api")
    res = CliRunner().invoke(app, ["judge", str(tiny_study_copy.yaml), "--dry-run", "--judge", "api"])
    assert res.exit_code == 0, res.output
    dry = float(res.output.split("estimated $")[1].split()[0])
    assert api.left == 64 and api.cost_usd == pytest.approx(dry, rel=0.05)


def test_measure_times_training_and_generation_here(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    """--measure fills the rates the spec and store do not give, and writes nothing to the study."""
    path = _fresh(tmp_path, tiny_study_dict, executor={"throughput": {"judgments_per_s": 5.0}})
    res = CliRunner().invoke(app, ["plan", str(path), "--measure", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "measured" in res.output and "unknown" not in res.output
    plan = _plan(path)  # without --measure: nothing was stored, the rates are unknown again
    assert plan.rates["train"].source == "none" and plan.rates["judge llm"].source == "spec"
    assert not (tmp_path / "fresh" / "study.sqlite").exists() and not (tmp_path / "fresh" / "runs").exists()


def test_makespan_longest_first() -> None:
    assert makespan([6, 6], 2) == 6
    assert makespan([5, 4, 3, 3], 2) == 8  # {5, 3} and {4, 3}
    assert makespan([1, 1, 1], 8) == 1
    assert makespan([], 4) == 0


def test_plain_progress_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TRAITWATCH_PROGRESS", raising=False)
    now = [100.0]
    with stage_progress("generate", 100, interval=30, clock=lambda: now[0]) as bar:
        for _ in range(10):
            now[0] += 10
            bar.advance(10)
        bar.note("arith-strong-s0")
        bar.grow(20)
        now[0] += 40
        bar.advance(20)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "generate: 100 to do",
        "generate: 30/100 (30%), 1/s, elapsed 30s, eta 1m10s",
        "generate: 60/100 (60%), 1/s, elapsed 1m00s, eta 40s",
        "generate: 90/100 (90%), 1/s, elapsed 1m30s, eta 10s",
        "generate: 120/120 (100%), 0.857/s, elapsed 2m20s, eta 0s [arith-strong-s0]",
        "generate: done 120/120 in 2m20s (0.857/s)",
    ]


def test_progress_interval_from_the_environment_and_a_stopped_stage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRAITWATCH_PROGRESS", raising=False)
    monkeypatch.setenv("TRAITWATCH_PROGRESS_INTERVAL", "5")
    now = [0.0]
    with pytest.raises(KeyboardInterrupt), stage_progress("judge llm", 4, clock=lambda: now[0]) as bar:
        for _ in range(3):
            now[0] += 4
            bar.advance()
        raise KeyboardInterrupt
    assert capsys.readouterr().err.splitlines() == [
        "judge llm: 4 to do",
        "judge llm: 2/4 (50%), 0.25/s, elapsed 8s, eta 8s",
        "judge llm: stopped at 3/4 after 12s",
    ]


def test_progress_off_keeps_only_the_start_and_end_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRAITWATCH_PROGRESS", "0")
    now = [0.0]
    with stage_progress("train (steps)", 12, interval=0, clock=lambda: now[0]) as bar:
        for _ in range(12):
            now[0] += 100
            bar.advance()
    assert capsys.readouterr().err.splitlines() == ["train (steps): 12 to do", "train (steps): done (12 of 12)"]
