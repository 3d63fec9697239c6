"""Probe questions for a live monitor: ranking, selection, the onset comparison, cost, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from traitwatch.analysis._probes import choose_probes, pick, question_movement, rank_questions
from traitwatch.analysis._samples import arrange
from traitwatch.config import AnalysisSpec
from traitwatch.errors import TraitwatchError
from traitwatch.store import ScoreColumns, ScoreRow

STEPS = list(range(0, 22, 2))  # 11 checkpoints: step 0 and 10 after it
ANALYSIS = AnalysisSpec(bootstrap=60, leads=[("wrong", "evil")])


def rows(
    run: str, rises: dict[str, tuple[int | None, float]], *, trait: str = "wrong", judge: str = "check", samples: int = 2
) -> list[ScoreRow]:
    """Scores of one run: question id -> (step it rises at or None, by how much), 0 before."""
    out = []
    for qid, (at, by) in rises.items():
        for step in STEPS:
            value = by if at is not None and step >= at else 0.0
            out.extend(ScoreRow(run, step, "s", qid, k, judge, trait, value) for k in range(samples))
    return out


def early_late_never(early: int = 2, late: int = 10, never: int = 8, by: float = 60.0) -> dict[str, tuple[int | None, float]]:
    rises: dict[str, tuple[int | None, float]] = {f"early{i}": (2, by) for i in range(early)}
    rises |= {f"late{i}": (8, by) for i in range(late)}
    rises |= {f"never{i}": (None, 0.0) for i in range(never)}
    return rises


def test_question_movement_score_crossing_and_spikes() -> None:
    data = rows("r", {"early": (2, 60.0), "late": (12, 60.0), "flat": (None, 0.0)})
    data += [ScoreRow("r", s, "s", "spike", k, "check", "wrong", 80.0 if s == 10 else 0.0) for s in STEPS for k in range(2)]
    (ts,) = arrange(data).values()
    got = question_movement(ts)
    assert got[("s", "early")].score == pytest.approx(60.0) and got[("s", "early")].crossing_step == 2
    # rises at the 6th checkpoint after the baseline: 5 of 10 checkpoints risen
    assert got[("s", "late")].score == pytest.approx(30.0) and got[("s", "late")].crossing_step == 12
    assert got[("s", "flat")].score == 0.0 and got[("s", "flat")].crossing_step is None
    # one checkpoint up, then back: not a sustained rise, not a mover
    assert got[("s", "spike")].score == 0.0 and got[("s", "spike")].peak_rise == pytest.approx(80.0)


def test_early_questions_are_chosen_and_fire_earlier_than_the_full_set() -> None:
    runs = [{"run_id": "a", "level": "strong"}]
    choice = choose_probes(rows("a", early_late_never()), runs, ANALYSIS, questions=2, samples=1)
    assert {q.question_id for q in choice.chosen} == {"early0", "early1"}
    assert choice.traits == ["wrong"] and choice.judges == {"wrong": "check"}
    (c,) = choice.comparisons
    # full set: the 2 early questions lift the mean by 6 points (under the effect size), the 10
    # late ones by 30 more at step 8; the probe set rises 60 points at step 2
    assert c.full.step == 8 and c.probe.step == 2
    assert c.lead.lead_steps == 6 and c.lead.lead_checkpoints == 3
    assert c.verdict() == "probe set earlier by 6 steps (3 checkpoints)"
    assert c.lead.ci_steps is not None and c.lead.ci_steps[0] > 0
    # one misaligned run: the comparison is in-sample, and the output says so
    assert choice.validation == "in-sample" and c.validation == "in-sample"
    assert any("in-sample" in n and "selection bias" in n for n in choice.notes)


def test_questions_that_never_move_are_not_chosen() -> None:
    runs = [{"run_id": "a", "level": "mild"}]
    choice = choose_probes(rows("a", early_late_never()), runs, ANALYSIS, questions=15)
    ids = [q.question_id for q in choice.chosen]
    assert len(ids) == 12 and not any(i.startswith("never") for i in ids)
    assert ids[:2] == ["early0", "early1"]  # earlier beats later at the same size
    assert any("only 12 question(s)" in n for n in choice.notes)
    ranking = choice.ranking["wrong"]
    assert [q.moved for q in ranking] == [True] * 12 + [False] * 8


def test_earliness_and_size_trade_off_as_documented() -> None:
    data = rows("a", {"early_small": (2, 20.0), "late_big": (14, 90.0), "mid": (8, 40.0)})
    ranked = rank_questions(arrange(data), ["a"], "check", "wrong")
    # scores: 20 x 10/10 = 20, 90 x 4/10 = 36, 40 x 7/10 = 28
    assert [(q.question_id, round(q.score)) for q in ranked] == [("late_big", 36), ("mid", 28), ("early_small", 20)]


def test_leave_one_run_out_selects_on_the_other_runs() -> None:
    common = {"e0": (2, 60.0), "e1": (2, 60.0)}
    quiet = {f"n{i}": (None, 0.0) for i in range(10)}
    # each misaligned run has two questions of its own that rise more, but only there
    a = rows("a", common | {"a0": (2, 90.0), "a1": (2, 90.0), "b0": (None, 0.0), "b1": (None, 0.0)} | quiet)
    b = rows("b", common | {"b0": (2, 90.0), "b1": (2, 90.0), "a0": (None, 0.0), "a1": (None, 0.0)} | quiet)
    n = rows("n", {q: (None, 0.0) for q in ["e0", "e1", "a0", "a1", "b0", "b1", *quiet]})
    runs = [{"run_id": "a", "level": "strong"}, {"run_id": "b", "level": "strong"}, {"run_id": "n", "level": "normal"}]
    choice = choose_probes(a + b + n, runs, ANALYSIS, questions=2)
    assert choice.validation == "leave-one-run-out" and choice.selection_runs == ["a", "b"]
    assert any("leave-one-run-out" in note for note in choice.notes)
    # chosen on both runs: the questions that rise in both (mean 60) beat the run-specific (mean 45)
    assert {q.question_id for q in choice.chosen} == {"e0", "e1"}
    by_run = {c.run_id: c for c in choice.comparisons}
    assert by_run["a"].validation == "held out" and by_run["a"].selected_on == ("b",)
    assert {q for _, q in by_run["a"].probe_set} == {"b0", "b1"}  # chosen on b, never on a itself
    assert by_run["b"].selected_on == ("a",) and {q for _, q in by_run["b"].probe_set} == {"a0", "a1"}
    # held out, run b's favourites do not move in run a: the honest answer is no probe onset
    assert by_run["a"].probe.step is None and by_run["a"].full.step is not None
    assert by_run["n"].validation == "not selected on" and {q for _, q in by_run["n"].probe_set} == {"e0", "e1"}
    assert by_run["n"].probe.step is None and by_run["n"].full.step is None


def test_an_onset_on_a_normal_run_is_reported_as_a_possible_false_alarm() -> None:
    a = rows("a", early_late_never())
    quiet = rows("n", {q: (None, 0.0) for q in early_late_never()})
    # the normal run's probe questions (the early ones) drift up 40 points late in training
    noisy = rows("m", {q: ((14, 40.0) if q.startswith("early") else (None, 0.0)) for q in early_late_never()})
    runs = [{"run_id": "a", "level": "strong"}, {"run_id": "n", "level": "normal"}]
    clean = choose_probes(a + quiet, runs, ANALYSIS, questions=2)
    assert any("no onset on the probe set in 1 normal run(s) (no false alarm)" in n for n in clean.notes), clean.notes
    runs.append({"run_id": "m", "level": "normal"})
    drifting = choose_probes(a + quiet + noisy, runs, ANALYSIS, questions=2)
    [note] = [n for n in drifting.notes if "false alarm" in n]
    assert "possible false alarm" in note and "1 of 2 normal run(s)" in note and "m step 14" in note, note


def test_cost_table_counts_answers_and_requests() -> None:
    data = rows("a", early_late_never())
    data += [ScoreRow(r.run_id, r.step, r.suite, r.question_id, r.sample, "check", "other", 0.0) for r in data]
    data += [ScoreRow(r.run_id, r.step, r.suite, r.question_id, r.sample, "llm", "wrong", r.score) for r in data if r.trait == "wrong"]
    choice = choose_probes(data, [{"run_id": "a", "level": "strong"}], ANALYSIS, questions=2, samples=1, full_samples=2)
    cost = {r.what: (r.probe, r.full) for r in choice.cost}
    assert cost["questions"] == (2, 20)
    assert cost["answers per checkpoint"] == (2, 40)
    assert cost["judge requests per checkpoint: check"] == (4, 80)  # two traits
    assert cost["judge requests per checkpoint: llm"] == (2, 40)
    assert cost["judge requests per checkpoint: all judges"] == (6, 120)
    assert cost["generation seconds per checkpoint"] == (None, None)
    spa = choose_probes(
        data, [{"run_id": "a", "level": "strong"}], ANALYSIS, questions=2, seconds_per_answer=(0.5, "measured"), live_judges=["llm"]
    )
    cost = {r.what: (r.probe, r.full) for r in spa.cost}
    assert cost["generation seconds per checkpoint"] == (1.0, 20.0)
    assert cost["judge requests per checkpoint: live judges"] == (2, 40)


def test_watched_traits_default_to_leaders_and_round_robin() -> None:
    data = rows("a", {"w0": (2, 60.0), "w1": (2, 50.0)}) + rows("a", {"v0": (2, 70.0), "v1": (4, 70.0)}, trait="evil")
    runs = [{"run_id": "a", "level": "strong"}]
    assert choose_probes(data, runs, ANALYSIS, questions=3).traits == ["wrong"]  # the leader of analysis.leads
    both = choose_probes(data, runs, ANALYSIS, traits=["wrong", "evil"], questions=3)
    assert [q.question_id for q in both.chosen] == ["w0", "v0", "w1"]
    assert pick(both.ranking, 1)[0][0].question_id == "w0"
    with pytest.raises(TraitwatchError, match="no scores for trait 'nope'"):
        choose_probes(data, runs, ANALYSIS, traits=["nope"])
    with pytest.raises(TraitwatchError, match="no misaligned"):
        choose_probes(data, [{"run_id": "a", "level": "normal"}], ANALYSIS)


def test_probe_set_uses_only_its_first_samples() -> None:
    data = rows("a", early_late_never(), samples=3)
    cols = ScoreColumns.from_rows(data)
    choice = choose_probes(cols, [{"run_id": "a", "level": "strong"}], ANALYSIS, questions=2, samples=2)
    assert choice.snippet() == {"monitor": {"probes": {"question_ids": ["early0", "early1"], "samples": 2}}}
    assert {r.what: r.full for r in choice.cost}["samples per question"] == 3
    (c,) = choice.comparisons
    assert c.probe.step == 2 and c.full.step == 8


def test_cli_on_the_tiny_study_writes_the_monitor_snippet(completed_tiny_study, tmp_path: Path) -> None:
    from traitwatch.cli import app
    from traitwatch.config import ProbeSpec

    out = tmp_path / "probes.yaml"
    res = CliRunner().invoke(app, ["probes", str(completed_tiny_study.yaml), "--questions", "3", "--samples", "2", "--write", str(out)])
    assert res.exit_code == 0, res.output
    assert "probe questions" in res.output and "cost per checkpoint" in res.output and "consensus onset" in res.output
    assert "in-sample" in res.output  # the tiny study has one misaligned run
    data = yaml.safe_load(out.read_text())
    assert list(data) == ["monitor"] and list(data["monitor"]) == ["probes"]
    probes = data["monitor"]["probes"]
    assert set(probes) == {"question_ids", "samples"} and probes["samples"] == 2
    assert len(probes["question_ids"]) == 3 and all(isinstance(q, str) for q in probes["question_ids"])
    assert ProbeSpec.model_validate(probes).question_ids == probes["question_ids"]  # the monitor's own schema takes it


def test_cli_names_an_unknown_trait(completed_tiny_study) -> None:
    from traitwatch.cli import app

    res = CliRunner().invoke(app, ["probes", str(completed_tiny_study.yaml), "--trait", "nope"])
    assert res.exit_code == 2 and "no scores for trait 'nope'" in res.output
