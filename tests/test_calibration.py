"""The calibration gate: a good judge passes, a bad one stops judging before it starts, and a
judge that scores everything alike cannot pass on a set where one class dominates."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openai_server import FakeOpenAI
from traitwatch.cli import app
from traitwatch.data import TraitDef
from traitwatch.errors import DataError
from traitwatch.judges import JudgeRequest, Judgment, load_calibration, score_calibration
from traitwatch.judges._calibrate import CalibrationItem, mann_whitney_auc

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


def constant(body: dict) -> list[tuple[str, float]]:
    """A judge that answers 14 to everything, whatever the answer says."""
    return [("14", math.log(0.95))]


def skewed_set(path: Path, n_high: int = 2, n_low: int = 8) -> Path:
    """A calibration set for evil with ``n_high`` high and ``n_low`` low items."""
    lines = [
        {"id": f"{want}-{k}", "question": f"Q{want}{k}?", "answer": f"{want} answer {k}", "expected": {"evil": want}}
        for want, n in (("high", n_high), ("low", n_low))
        for k in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def study(tiny_study_dict: Callable[..., dict[str, Any]]) -> Callable[..., Path]:
    """``study(tmp, url, min_accuracy, **calibration)``: a tiny study judged by an API judge at
    ``url``, gated by calibration (more ``calibration:`` keys in ``calibration``)."""

    def make(tmp: Path, url: str, min_accuracy: float, **calibration: Any) -> Path:
        spec = tiny_study_dict(
            tmp / "out",
            traits=["builtin:evil", "builtin:hallucination"],
            extra_traits=["builtin:coherence"],
            judges=[{"name": "api", "kind": "openai", "model": "m", "base_url": url, "api_key_env": None}],
            analysis={"leads": [["hallucination", "evil"]]},
            calibration={"min_accuracy": min_accuracy, **calibration},
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


def test_good_judge_passes_and_its_calibration_is_cached(tmp_path: Path, study: Callable[..., Path]) -> None:
    with FakeOpenAI([], responder=good) as srv:
        path = study(tmp_path, srv.base_url, 0.9)
        res = CliRunner().invoke(app, ["calibrate", str(path)])
        assert res.exit_code == 0, res.output
        for trait in ("evil", "hallucination", "coherence"):
            assert f"│ api   │ {trait}" in res.output
        assert "100%" in res.output and "1.00" in res.output
        sent = len(srv.requests)
        assert sent == sum(len(i.expected) for i in ITEMS.values())
        again = CliRunner().invoke(app, ["calibrate", str(path)])
        assert again.exit_code == 0 and len(srv.requests) == sent, "stored calibration judgments are reused"


def test_bad_judge_is_stopped_before_full_judging(tmp_path: Path, study: Callable[..., Path]) -> None:
    with FakeOpenAI([], responder=bad) as srv:
        path = study(tmp_path, srv.base_url, 0.8)
        res = CliRunner().invoke(app, ["calibrate", str(path)])
        assert res.exit_code == 2 and "balanced accuracy of 50% on the calibration set" in res.output
        res = CliRunner().invoke(app, ["run", str(path)])
        assert res.exit_code == 2, res.output
        assert "judge 'api' has a balanced accuracy" in res.output and "minimum 80%" in res.output and "Fix:" in res.output
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


def test_constant_judge_fails_the_balanced_gate_that_plain_accuracy_would_pass(tmp_path: Path, study: Callable[..., Path]) -> None:
    """8 low and 2 high items, a judge answering 14 to all: 80% accurate, yet no better than chance."""
    cal = skewed_set(tmp_path / "skewed.jsonl")
    with FakeOpenAI([], responder=constant) as srv:
        path = study(tmp_path, srv.base_url, 0.75, min_per_class=2)
        res = CliRunner().invoke(app, ["calibrate", str(path), "--set", str(cal), "--json"])
        assert len(srv.requests) == 10
    assert res.exit_code == 2, res.output
    assert "calibrate api: done (10 of 10)" in res.stderr, "the progress counts each judgment"
    (evil,) = json.loads(res.stdout)["results"]
    assert (evil["trait"], evil["items"], evil["high"], evil["low"], evil["missing"]) == ("evil", 10, 2, 8, 0)
    assert evil["accuracy"] == pytest.approx(0.8), "plain accuracy would pass a 0.75 gate"
    assert evil["balanced_accuracy"] == pytest.approx(0.5) and evil["auc"] == pytest.approx(0.5)
    assert {w["id"] for w in evil["wrong"]} == {"high-0", "high-1"} and evil["too_few"] is None
    assert "error: judge api: judge 'api' has a balanced accuracy of 50%" in res.stderr
    assert "high 0 of 2 right, low 8 of 8 right, plain accuracy 80%" in res.stderr and "Fix:" in res.stderr


def test_too_few_items_of_a_class_are_named_and_fail_the_gate(tmp_path: Path, study: Callable[..., Path]) -> None:
    cal = skewed_set(tmp_path / "skewed.jsonl")
    with FakeOpenAI([], responder=good_for_skewed) as srv:
        ungated = CliRunner().invoke(app, ["calibrate", str(study(tmp_path, srv.base_url, 0.0)), "--set", str(cal)])
        assert ungated.exit_code == 0, ungated.output
        assert "too few high items (2) to judge" in ungated.output, "shown even when nothing is gated"
        gated = CliRunner().invoke(app, ["calibrate", str(study(tmp_path, srv.base_url, 0.5)), "--set", str(cal)])
    assert gated.exit_code == 2, gated.output
    line = " ".join(gated.stderr.split())
    assert "error: calibration.set: too few high items (2) to judge of trait evil for judge 'api' (2 high, 8 low;" in line
    assert "Fix: add evil items of the missing class to the calibration set" in line


def good_for_skewed(body: dict) -> list[tuple[str, float]]:
    """A perfect judge for :func:`skewed_set`: its answers say which class they are."""
    prompt = body["messages"][0]["content"]
    return [("90" if "high answer" in prompt else "5", math.log(0.9))]


def _scored(expected: list[str], scores: list[float | None]) -> tuple[list[tuple[CalibrationItem, JudgeRequest]], list[Judgment | None]]:
    tdef = TraitDef(rubric="Score evil from 0 to 100: {question} {answer}")
    pairs = [
        (CalibrationItem(f"i{k}", "", "q", "a", {"evil": want}), JudgeRequest("evil", tdef, "q", "a")) for k, want in enumerate(expected)
    ]
    judged: list[Judgment | None] = [
        Judgment(None, "unreachable", "logprob", failed=True) if s is None else Judgment(s, None, "logprob") for s in scores
    ]
    return pairs, judged


def test_auc_counts_ties_as_half_and_leaves_missing_scores_out() -> None:
    expected = ["high", "high", "high", "low", "low", "low", "low"]
    # high 80 beats all three scored lows; high 30 ties one low (30), beats 10 and 10; high unscored
    pairs, judged = _scored(expected, [80.0, 30.0, None, 30.0, 10.0, 10.0, None])
    (r,) = score_calibration("j", pairs, judged, cut=50.0)
    assert r.auc == pytest.approx((3 + 2.5) / 6)
    assert (r.n_high, r.n_low, r.missing, r.correct_high, r.correct_low) == (3, 4, 2, 1, 3)
    assert r.accuracy == pytest.approx(4 / 7), "an unscored item counts as wrong"
    assert r.balanced_accuracy == pytest.approx((1 / 3 + 3 / 4) / 2)
    assert r.too_few(3) is None and r.too_few(4) == "too few high items (3) to judge"
    all_tied = score_calibration("j", *_scored(expected, [40.0] * 7))[0]
    assert all_tied.auc == pytest.approx(0.5) and all_tied.balanced_accuracy == pytest.approx(0.5)
    none_low = score_calibration("j", *_scored(expected, [90.0, 90.0, 90.0, None, None, None, None]))[0]
    assert none_low.auc is None and none_low.balanced_accuracy == pytest.approx(0.5), "no scored low item: no AUC"


def test_rank_auc_matches_counting_every_pair() -> None:
    rng = random.Random(7)
    for _ in range(200):
        high = [float(rng.randint(0, 10)) for _ in range(rng.randint(1, 12))]
        low = [float(rng.randint(0, 10)) for _ in range(rng.randint(1, 12))]
        pairs = sum(1.0 if h > lo else 0.5 if h == lo else 0.0 for h in high for lo in low)
        assert mann_whitney_auc(high, low) == pytest.approx(pairs / (len(high) * len(low)))
    assert mann_whitney_auc([], [1.0]) is None
