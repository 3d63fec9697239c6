"""The Python API: ``traitwatch.Study`` on real tiny studies, in and out of an event loop."""

from __future__ import annotations

import asyncio
import csv
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import traitwatch as tw
from openai_server import FakeOpenAI
from tiny import TinyStudy, write_study

SCORE_COLUMNS = ["run", "domain", "level", "seed", "step", "trait", "suite", "question_id", "sample", "judge", "score", "answer"]


def test_open_a_stored_study_and_read_scores(completed_tiny_study: TinyStudy) -> None:
    study = tw.Study.open(completed_tiny_study.out)
    assert study.spec.name == "tiny" and study.paths.out == completed_tiny_study.out.resolve()
    scores = study.scores()
    assert list(scores.columns) == SCORE_COLUMNS
    with sqlite3.connect(completed_tiny_study.out / "study.sqlite") as db:
        links = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        answer = db.execute(
            "SELECT answer FROM generations WHERE run_id='arith-strong-s0' AND step=6 ORDER BY question_id, sample"
        ).fetchone()[0]
    assert len(scores) == links > 0
    assert set(scores["judge"]) == {"check", "llm"} and set(scores["level"]) == {"normal", "strong"}
    assert set(scores.loc[scores.judge == "llm", "trait"]) == {"wrong_answer"}, "the llm judge scores only the traits it was given"
    row = scores[(scores.run == "arith-strong-s0") & (scores.step == 6)].sort_values(["question_id", "sample"]).iloc[0]
    assert row["answer"] == answer and row["seed"] == 0 and row["domain"] == "arith"
    assert scores["score"].between(0, 100).all()


def test_curves_onsets_and_leads_are_what_analyze_wrote(completed_tiny_study: TinyStudy) -> None:
    study = tw.Study.open(completed_tiny_study.yaml.parent / "out" / "study.sqlite")  # the store file works too
    curves = study.curves()
    with (completed_tiny_study.out / "analysis" / "curves.csv").open() as fh:
        written = list(csv.DictReader(fh))
    assert len(curves) == len(written) > 0
    first = written[0]
    match = curves[
        (curves.run == first["run_id"])
        & (curves.judge == first["judge"])
        & (curves.trait == first["trait"])
        & (curves.step == int(first["step"]))
    ]
    assert float(match["mean"].iloc[0]) == pytest.approx(float(first["mean"]))
    onsets = study.onsets()
    assert {"run", "judge", "trait", "detector", "step", "ci_low", "ci_high"} <= set(onsets.columns)
    assert set(onsets["detector"]) == {"threshold", "sustained", "cusum", "binseg", "consensus"}
    assert str(onsets["step"].dtype) == "Int64", "a step is a whole number or missing"
    leads = study.leads()
    assert {"leader", "follower", "lead_steps", "ci_steps_low", "ci_steps_high"} <= set(leads.columns)
    assert set(zip(leads.leader, leads.follower, strict=True)) == {("wrong_answer", "contempt")}
    assert len(study.summary()) == len([c for c in study.analysis().curves])


def test_run_a_subset_then_the_rest_skips_stored_work(tiny_study_copy: TinyStudy) -> None:
    study = tw.Study.load(tiny_study_copy.yaml)
    again = study.run(stages=["train", "generate"])
    assert [r.name for r in again] == ["train", "generate"]
    assert again[0].counts["steps_run"] == 0 and again[1].counts["generated"] == 0
    assert again[1].counts["answers"] > 0
    judged = study.run(stages=["judge"])[0].counts
    assert all(c["new"] == 0 for c in judged.values())


def test_unknown_stage_is_refused_before_any_work(tiny_study: Path) -> None:
    from traitwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage judgee"):
        tw.Study.load(tiny_study).run(stages=["train", "judgee"])
    assert not (tiny_study.parent / "out" / "study.sqlite").exists()


def test_open_a_folder_without_a_study_says_what_to_do(tmp_path: Path) -> None:
    from traitwatch.errors import StoreError

    with pytest.raises(StoreError, match="no study store here") as err:
        tw.Study.open(tmp_path)
    assert "Study.load" in err.value.one_line()


def _fake_judge_top(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [("70", -0.2), ("20", -1.8)]


def test_run_with_an_openai_judge_inside_a_running_event_loop(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    """What a notebook does: ``study.run()`` from a cell, i.e. with an event loop running."""
    with FakeOpenAI([("50", -0.1)], responder=_fake_judge_top) as srv:
        spec = tiny_study_dict(
            tmp_path / "out",
            levels=["strong"],
            training={
                "max_steps": 2,
                "save_every": 2,
                "batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_length": 48,
                "heldout_max": 4,
            },
            generation={"samples_per_question": 1, "temperature": 0, "max_new_tokens": 4},
            judges=[
                {
                    "name": "api",
                    "kind": "openai",
                    "model": "judge-test",
                    "base_url": srv.base_url,
                    "api_key_env": None,
                    "traits": ["wrong_answer"],
                }
            ],
            analysis={"leads": [], "bootstrap": 20},
        )
        study = tw.Study.load(write_study(tmp_path / "s.yaml", spec))

        async def cell() -> list[Any]:
            asyncio.get_running_loop()  # the notebook's loop is running here
            return study.run(stages=["train", "generate", "judge"])

        results = asyncio.run(cell())
        assert results[-1].counts["api"]["new"] == len(srv.requests) > 0
    scores = study.scores()
    assert set(scores["judge"]) == {"api"}
    assert scores["score"].tolist() == pytest.approx([(70 * 0.819 + 20 * 0.165) / (0.819 + 0.165)] * len(scores), abs=0.1)


def test_importing_traitwatch_changes_no_global_state() -> None:
    """No matplotlib backend switch, no global warnings filter: checked in a fresh interpreter
    after importing every public module and making a figure."""
    code = r"""
import warnings, matplotlib
matplotlib.use("svg")
import torch, transformers, peft, scipy, plotly  # their own import-time filters are theirs, not ours
before = list(warnings.filters)
import traitwatch as tw, traitwatch.pipeline, traitwatch.report, traitwatch.cli, traitwatch.train, traitwatch.judges
tw.Study
from traitwatch.report._figures import trait_colors
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert list(warnings.filters) == before, [f for f in warnings.filters if f not in before]
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr[-2000:]
