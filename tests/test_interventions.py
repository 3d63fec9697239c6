"""Interventions: stop policies replayed on known curves give the numbers computed by hand;
alarm stops come from the online detector (never the offline onset); the command, the API
and the report show them for a real tiny study."""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import traitwatch as tw
from tiny import TinyStudy
from traitwatch.analysis import REGISTRY, Curve, OnsetResult, StudyAnalysis, TraitCurve, make_detector
from traitwatch.analysis._interventions import AlarmSettings, intervention_tables, replay_alarm, task_kept, wilson
from traitwatch.cli import app
from traitwatch.config import StudySpec
from traitwatch.store import CheckpointRow

STEPS = list(range(21))  # a checkpoint every step, 0..20
LEADER, FOLLOWER, ERROR = "wrong_answer", "contempt", "task_error"


def _step_curve(rise_at: int | None, high: float = 80.0, low: float = 0.0) -> Curve:
    mean = [high if rise_at is not None and s >= rise_at else low for s in STEPS]
    return Curve.from_values(STEPS, mean, np.zeros(len(STEPS)))


def _loss(s: int) -> float:
    """Held-out loss: 2.0 at step 0, down 0.1 a step until step 10, then flat at 1.0."""
    return 2.0 - 0.1 * min(s, 10)


def _checkpoints(run_id: str) -> list[CheckpointRow]:
    return [CheckpointRow(run_id, s, f"step_{s:06d}", "sha", None, _loss(s), None, None, None) for s in STEPS]


def _onset(run_id: str, trait: str, step: int | None) -> OnsetResult:
    return OnsetResult(run_id, "check", trait, "consensus", step, None if step is None else STEPS.index(step), None, 1.0)


def _analysis(
    runs: dict[str, tuple[str, Curve, Curve, int | None, int | None]], alarms: list[dict[str, Any]] | None = None
) -> StudyAnalysis:
    """runs: run_id -> (level, leader curve, follower curve, leader consensus onset, follower consensus onset)."""
    curves, onsets = [], []
    for run_id, (_, lc, fc, lo, fo) in runs.items():
        curves += [TraitCurve(run_id, "check", LEADER, lc), TraitCurve(run_id, "check", FOLLOWER, fc)]
        # the task's error rate: 60% at step 0, down 5 points a step until step 10, then 10%
        err = Curve.from_values(STEPS, [60.0 - 5 * min(s, 10) for s in STEPS])
        curves.append(TraitCurve(run_id, "check", ERROR, err))
        onsets += [_onset(run_id, LEADER, lo), _onset(run_id, FOLLOWER, fo)]
    return StudyAnalysis(
        settings_hash="x",
        curves=curves,
        onsets=onsets,
        leads=[],
        agreement=[],
        runs=[{"run_id": r, "domain": "d", "level": v[0], "seed": 0} for r, v in runs.items()],
        checkpoints={r: _checkpoints(r) for r in runs},
        alarms=alarms or [],
    )


def _spec(**analysis: Any) -> StudySpec:
    settings = {"detectors": ["threshold"], "leads": [[LEADER, FOLLOWER]], "bootstrap": 4000} | analysis
    return StudySpec(name="t", datasets=[{"domain": "d", "demo": {}}], traits=["builtin:arithmetic"], analysis=settings)


def _row(rows: list[dict[str, Any]], run_id: str, policy: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["run_id"] == run_id and r["policy"] == policy]
    return row


STRONG = ("strong", _step_curve(4), _step_curve(10), 4, 10)


def test_stop_steps_kept_avoided_and_warning_by_hand() -> None:
    """Leader rises at step 4, follower at 10; threshold (persist 3) fires online at step 6 on
    the leader and 12 on the follower; the loss reaches 95% of its improvement at step 10."""
    rows, _ = intervention_tables(_analysis({"strong": STRONG}), _spec())
    expected = {  # policy: (stop step, task kept, spread avoided, warning in checkpoints)
        "leader-alarm": (6, 0.6, True, 4),
        "follower-alarm": (12, 1.0, False, -2),
        "task-converged": (10, 1.0, False, 0),
        "fraction-0.25": (5, 0.5, True, 5),
        "fraction-0.5": (10, 1.0, False, 0),
    }
    assert [r["policy"] for r in rows] == list(expected)
    for policy, (stop, kept, avoided, warning) in expected.items():
        r = _row(rows, "strong", policy)
        assert (r["stop_step"], r["spread_avoided"], r["warning_checkpoints"]) == (stop, avoided, warning), policy
        assert r["task_kept"] == pytest.approx(kept), policy
        assert r["warning_steps"] == 10 - stop
        assert r["heldout_loss_at_stop"] == pytest.approx(_loss(stop))
        assert r["false_alarm"] is None, "false alarms are counted on normal runs only"
    leader = _row(rows, "strong", "leader-alarm")
    assert (leader["leader_at_stop"], leader["follower_at_stop"], leader["leader_at_end"], leader["follower_at_end"]) == (80, 0, 80, 80)
    assert leader["scores_at_stop"] == {ERROR: 30.0, FOLLOWER: 0.0, LEADER: 80.0}
    assert (leader["final_step"], leader["leader_onset"], leader["follower_onset"]) == (20, 4, 10)
    assert leader["alarm_trait"] == LEADER and leader["alarm_rule"] == "analysis: threshold"
    assert leader["task_accuracy_at_stop"] is None, "no task_error_trait set: no accuracy"


def test_task_accuracy_from_the_task_error_trait() -> None:
    rows, summary = intervention_tables(_analysis({"strong": STRONG}), _spec(task_error_trait=ERROR))
    r = _row(rows, "strong", "leader-alarm")  # error 30% at step 6, 10% at the end
    assert (r["task_accuracy_at_stop"], r["task_accuracy_at_end"]) == pytest.approx((0.7, 0.9))
    assert r["accuracy_kept"] == pytest.approx(0.7 / 0.9)
    s = next(s for s in summary if s["policy"] == "leader-alarm")
    assert s["accuracy_kept_mean"] == pytest.approx(0.7 / 0.9) and s["accuracy_kept_n"] == 1


def test_a_policy_that_never_fires_runs_to_the_end_and_false_alarms_count_on_normal_runs() -> None:
    runs = {
        "strong": STRONG,
        "mild": ("mild", _step_curve(8), _step_curve(16), 8, 16),  # leader alarm at 10, follower at 18
        "normal-quiet": ("normal", _step_curve(None), _step_curve(None), None, None),
        "normal-blip": ("normal", _step_curve(3, high=30.0), _step_curve(None), 3, None),
    }
    rows, summary = intervention_tables(_analysis(runs), _spec())
    quiet = _row(rows, "normal-quiet", "leader-alarm")
    assert quiet["stop_step"] is None and not quiet["stopped"] and quiet["task_kept"] == 1.0
    assert quiet["spread_avoided"] is True, "no follower onset: nothing spread"
    assert quiet["false_alarm"] is False and quiet["warning_checkpoints"] is None
    assert quiet["leader_at_stop"] == quiet["leader_at_end"]
    assert _row(rows, "normal-blip", "leader-alarm")["false_alarm"] is True
    assert _row(rows, "normal-blip", "follower-alarm")["false_alarm"] is False
    assert _row(rows, "normal-blip", "fraction-0.25")["false_alarm"] is None, "only alarm policies raise alarms"
    mild = _row(rows, "mild", "leader-alarm")
    assert (mild["stop_step"], mild["spread_avoided"], mild["warning_checkpoints"]) == (10, True, 6)
    assert mild["task_kept"] == pytest.approx(1.0)

    s = {x["policy"]: x for x in summary}
    lead = s["leader-alarm"]
    assert (lead["runs"], lead["stopped"], lead["misaligned_runs"], lead["task_kept_n"]) == (4, 3, 2, 2)
    assert lead["task_kept_mean"] == pytest.approx((0.6 + 1.0) / 2), "mean over the mild and strong runs"
    # two runs resampled: the bootstrap means are 0.6, 0.8 and 1.0 (p 1/4, 1/2, 1/4): the 95% CI is [0.6, 1.0]
    assert lead["task_kept_ci"] == pytest.approx([0.6, 1.0])
    assert (lead["spread_runs"], lead["spread_avoided"], lead["spread_avoided_rate"]) == (2, 2, 1.0)
    # Wilson, 2 of 2 at 95%: z = 1.95996; centre = (1 + z^2/4) / (1 + z^2/2), half = (z^2/4) / (1 + z^2/2)
    assert lead["spread_avoided_ci"] == pytest.approx([0.3424, 1.0], abs=1e-4)
    assert (lead["normal_runs"], lead["false_alarms"], lead["false_alarm_rate"]) == (2, 1, 0.5)
    assert lead["false_alarm_ci"] == pytest.approx(wilson(1, 2, 0.95))
    assert lead["warning_checkpoints_mean"] == pytest.approx((4 + 6) / 2)
    foll = s["follower-alarm"]
    assert (foll["spread_avoided"], foll["spread_avoided_rate"], foll["false_alarms"]) == (0, 0.0, 0)
    assert s["fraction-0.5"]["false_alarms"] is None and s["fraction-0.5"]["false_alarm_rate"] is None


def test_wilson_and_task_kept_edges() -> None:
    assert wilson(0, 0, 0.95) is None
    lo, hi = wilson(2, 3, 0.95) or (0.0, 0.0)
    assert lo < 2 / 3 < hi and 0 <= lo and hi <= 1
    assert task_kept(2.0, 2.5, 1.0) == 0.0, "a stop worse than step 0 kept nothing"
    assert task_kept(2.0, 0.5, 1.0) == 1.0, "a stop better than the end kept all of it, not more"
    assert task_kept(2.0, 1.5, 2.0) is None, "the run did not improve the held-out loss: nothing to keep"
    assert task_kept(None, 1.5, 1.0) is None


def _first_online_alarm(detector: str, curve: Curve) -> int | None:
    det = make_detector(detector)
    for s, m, e in zip(curve.steps, curve.mean, curve.se, strict=True):
        if det.update(int(s), float(m), float(e)) is not None:
            return int(s)
    return None


@pytest.mark.parametrize("detector", sorted(REGISTRY))
def test_alarm_stop_is_where_update_first_fires_never_the_offline_onset(detector: str) -> None:
    """On a noisy rise at step 12, every detector's alarm stop is the first step at which its
    online ``update`` fires, which is never before its offline onset of the whole curve."""
    rng = np.random.default_rng(3)
    steps = np.arange(0, 40)
    mean = np.where(steps >= 12, 60.0, 5.0) + rng.normal(0, 2.0, steps.size)
    curve = Curve.from_values(steps, mean, np.full(steps.size, 2.0))
    offline = make_detector(detector).detect(curve).step
    online = _first_online_alarm(detector, curve)
    assert replay_alarm(curve, AlarmSettings(detector, {})).step == online
    assert online is not None and offline is not None and online >= offline


def test_leader_alarm_uses_the_online_step_not_the_offline_onset() -> None:
    analysis = _analysis({"strong": STRONG})
    rows, _ = intervention_tables(analysis, _spec())
    leader = analysis.curve("strong", "check", LEADER)
    assert leader is not None
    offline = make_detector("threshold").detect(leader.curve).step
    r = _row(rows, "strong", "leader-alarm")
    assert offline == 4 and r["stop_step"] == _first_online_alarm("threshold", leader.curve) == 6


def test_monitor_alarm_rules_and_stored_live_alarms() -> None:
    """With a monitor section, its rule decides (min_rise, consecutive); stored live alarms are
    reported beside the replay."""
    spec = StudySpec(
        name="t",
        datasets=[{"domain": "d", "demo": {}}],
        traits=["builtin:arithmetic"],
        analysis={"detectors": ["binseg"], "leads": [[LEADER, FOLLOWER]]},
        monitor={"alarms": [{"trait": LEADER, "detector": "threshold", "min_rise": 50, "consecutive": 2}]},
    )
    live = [{"run_id": "strong", "step": 7, "judge": "check", "trait": LEADER, "detector": "threshold", "message": "m"}]
    rows, _ = intervention_tables(_analysis({"strong": STRONG}, alarms=live), spec)
    leader = _row(rows, "strong", "leader-alarm")
    # threshold fires at 6 (rise 80 >= 50); two checkpoints in a row meeting both: step 7
    assert leader["stop_step"] == 7 and leader["live_alarm_step"] == 7
    assert leader["alarm_rule"] == "monitor: threshold, min_rise 50, 2 in a row"
    follower = _row(rows, "strong", "follower-alarm")
    assert follower["stop_step"] == 13, "no rule for the follower: the first rule's detector and conditions"
    assert follower["live_alarm_step"] is None
    assert _row(rows, "strong", "fraction-0.5")["live_alarm_step"] is None


def test_configured_fractions_and_no_lead_pairs() -> None:
    rows, summary = intervention_tables(_analysis({"strong": STRONG}), _spec(stop_fractions=[0.1]))
    assert [r["policy"] for r in rows][-1] == "fraction-0.1" and _row(rows, "strong", "fraction-0.1")["stop_step"] == 2
    rows, summary = intervention_tables(_analysis({"strong": STRONG}), _spec(leads=[]))
    assert rows == [] and summary == []


# -- on the real tiny study (read-only) ----------------------------------------------------------

ROW_COLUMNS = [
    "run",
    "domain",
    "level",
    "seed",
    "judge",
    "leader",
    "follower",
    "policy",
    "alarm_trait",
    "alarm_rule",
    "stopped",
    "stop_step",
    "final_step",
    "live_alarm_step",
    "leader_onset",
    "follower_onset",
    "leader_at_stop",
    "leader_at_end",
    "follower_at_stop",
    "follower_at_end",
    "scores_at_stop",
    "scores_at_end",
    "heldout_loss_start",
    "heldout_loss_at_stop",
    "heldout_loss_at_end",
    "task_kept",
    "task_accuracy_at_stop",
    "task_accuracy_at_end",
    "accuracy_kept",
    "spread_avoided",
    "false_alarm",
    "warning_steps",
    "warning_checkpoints",
]


def test_command_prints_both_tables(completed_tiny_study: TinyStudy) -> None:
    res = CliRunner().invoke(app, ["interventions", str(completed_tiny_study.yaml)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "per run: stop policies replayed" in res.output and "across runs, per policy" in res.output
    for policy in ("leader-alarm", "follower-alarm", "task-converged", "fraction-0.25", "fraction-0.5"):
        assert policy in res.output
    assert "arith-strong-s0" in res.output and "93%" in res.output
    js = CliRunner().invoke(app, ["interventions", str(completed_tiny_study.yaml), "--json", "--fraction", "0.75"])
    assert js.exit_code == 0, js.output
    data = json.loads(js.output)
    assert {r["policy"] for r in data["interventions"]} == {"leader-alarm", "follower-alarm", "task-converged", "fraction-0.75"}
    assert {r["run_id"] for r in data["interventions"]} == {"arith-normal-s0", "arith-strong-s0"}
    assert {r["judge"] for r in data["interventions"]} == {"check"}, "the llm judge does not score the follower"
    bad = CliRunner().invoke(app, ["interventions", str(completed_tiny_study.yaml), "--fraction", "1.5"])
    assert bad.exit_code == 2 and "--fraction 1.5 is not between 0 and 1" in bad.output
    help_text = CliRunner().invoke(app, ["interventions", "--help"], env={"COLUMNS": "200"}).output
    assert "leader-alarm" in help_text and "docs/analysis.md" in help_text


def test_api_csv_and_report(completed_tiny_study: TinyStudy) -> None:
    study = tw.Study.open(completed_tiny_study.out)
    frame = study.interventions()
    assert list(frame.columns) == ROW_COLUMNS
    assert len(frame) == 2 * 5 and str(frame["stop_step"].dtype) == "Int64"
    assert frame["task_kept"].dropna().between(0, 1).all()
    summary = study.intervention_summary()
    assert {"policy", "task_kept_mean", "task_kept_ci_low", "task_kept_ci_high", "spread_avoided_rate", "false_alarm_rate"} <= set(
        summary.columns
    )
    with (completed_tiny_study.out / "analysis" / "interventions.csv").open() as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(frame) and written[0]["policy"] == frame["policy"][0]
    assert (completed_tiny_study.out / "analysis" / "interventions_summary.csv").exists()
    html = (completed_tiny_study.out / "report" / "report.html").read_text()
    assert "Stopping early: what it keeps and what it avoids" in html and "leader-alarm" in html
