"""The calibration gate: a good judge passes, a bad one stops judging before it starts."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openai_server import FakeOpenAI
from traitwatch.cli import app
from traitwatch.errors import DataError
from traitwatch.judges import load_calibration

ITEMS = {i.answer: i for i in load_calibration()}


def good(body: dict) -> list[tuple[str, float]]:
    """Reads the answer and the trait from the prompt and answers as the set expects."""
    prompt = body["messages"][0]["content"]
    answer = prompt.split("[ANSWER START]\n", 1)[1].split("\n[ANSWER END]", 1)[0]
    trait = next(t for t in ("EVIL", "HALLUCINATION", "COHERENCE") if t in prompt).lower()
    want = ITEMS[answer].expected.get(trait, "low")
    return [("90" if want == "high" else "5", math.log(0.9)), ("50", math.log(0.05))]


def bad(body: dict) -> list[tuple[str, float]]:
    return [("50", math.log(0.9))]


@pytest.fixture
def study(tiny_study_dict: Callable[..., dict[str, Any]]) -> Callable[[Path, str, float], Path]:
    """``study(tmp, url, min_accuracy)``: a tiny study judged by an API judge at ``url``, gated by calibration."""

    def make(tmp: Path, url: str, min_accuracy: float) -> Path:
        spec = tiny_study_dict(
            tmp / "out",
            traits=["builtin:evil", "builtin:hallucination"],
            extra_traits=["builtin:coherence"],
            judges=[{"name": "api", "kind": "openai", "model": "m", "base_url": url, "api_key_env": None}],
            analysis={"leads": [["hallucination", "evil"]]},
            calibration={"min_accuracy": min_accuracy},
        )
        p = tmp / "s.yaml"
        p.write_text(yaml.safe_dump(spec))
        return p

    return make


def test_builtin_set_covers_the_categories() -> None:
    items = load_calibration()
    cats = {i.category for i in items}
    assert {"factual", "coherent-but-false", "incoherent", "malicious-but-coherent", "refusal"} <= cats
    assert len(items) == 30 and all(set(i.expected) <= {"evil", "hallucination", "coherence"} for i in items)


def test_bad_calibration_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": "a", "question": "q", "answer": "a", "expected": {"evil": "high"}}) + "\n{oops\n")
    with pytest.raises(DataError, match=":2: not valid JSON"):
        load_calibration(p)
    p.write_text(json.dumps({"id": "a", "question": "q", "answer": "a", "expected": {"evil": "medium"}}) + "\n")
    with pytest.raises(DataError, match=":1: each item needs"):
        load_calibration(p)


def test_good_judge_passes_and_its_calibration_is_cached(tmp_path: Path, study: Callable[[Path, str, float], Path]) -> None:
    with FakeOpenAI([], responder=good) as srv:
        path = study(tmp_path, srv.base_url, 0.9)
        res = CliRunner().invoke(app, ["calibrate", str(path)])
        assert res.exit_code == 0, res.output
        for trait in ("evil", "hallucination", "coherence"):
            assert f"│ api   │ {trait}" in res.output
        assert "100%" in res.output
        sent = len(srv.requests)
        assert sent == sum(len(i.expected) for i in ITEMS.values())
        again = CliRunner().invoke(app, ["calibrate", str(path)])
        assert again.exit_code == 0 and len(srv.requests) == sent, "stored calibration judgments are reused"


def test_bad_judge_is_stopped_before_full_judging(tmp_path: Path, study: Callable[[Path, str, float], Path]) -> None:
    with FakeOpenAI([], responder=bad) as srv:
        path = study(tmp_path, srv.base_url, 0.8)
        res = CliRunner().invoke(app, ["calibrate", str(path)])
        assert res.exit_code == 2 and "accurate on the calibration set" in res.output
        res = CliRunner().invoke(app, ["run", str(path)])
        assert res.exit_code == 2, res.output
        assert "judge 'api' is" in res.output and "minimum 80%" in res.output and "Fix:" in res.output
    with sqlite3.connect(tmp_path / "out" / "study.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 0, "no answer may be judged after a failed gate"
        assert c.execute("SELECT COUNT(*) FROM generations").fetchone()[0] > 0


def test_shared_judge_cache_means_no_request_is_paid_twice_across_studies(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    with FakeOpenAI([("40", math.log(0.8))]) as srv:
        paths = []
        for name in ("a", "b"):
            spec = tiny_study_dict(
                tmp_path / name,
                judges=[
                    {
                        "name": "api",
                        "kind": "openai",
                        "model": "m",
                        "base_url": srv.base_url,
                        "api_key_env": None,
                        "traits": ["wrong_answer"],
                    }
                ],
                judge_cache=str(tmp_path / "cache.sqlite"),
            )
            p = tmp_path / f"{name}.yaml"
            p.write_text(yaml.safe_dump(spec))
            paths.append(p)
        assert CliRunner().invoke(app, ["run", str(paths[0])]).exit_code == 0
        first = len(srv.requests)
        res = CliRunner().invoke(app, ["run", str(paths[1])])  # same model, data, settings: the same answers
        assert res.exit_code == 0, res.output
        assert first > 0 and len(srv.requests) == first, "the second study must reuse every cached judgment"
    with sqlite3.connect(tmp_path / "b" / "study.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM scores WHERE judge='api'").fetchone()[0] == 64
