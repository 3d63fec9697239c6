"""Interventions: what stopping each run early would have kept and avoided, per stop policy.

Why: an alarm is only worth raising if acting on it pays. The published pay-off of early
stopping (emergent misalignment removed while keeping 93% of task performance on average; the
spread to a second trait avoided in 67% of runs) is a claim about stop policies; this module
replays those policies on what a study stored and reports the same numbers, with intervals.

Every policy is computed from the stored curves and held-out losses alone, and every alarm is
replayed ONLINE: the detector's ``update`` sees one checkpoint at a time, so a stop is never
earlier than what a live monitor could have known (the offline onset, which sees the whole
curve, is never used to stop). Every number is defined once, in docs/analysis.md
("Interventions").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from traitwatch.config import StudySpec
from traitwatch.store import CheckpointRow

from ._compare import task_convergence_step
from .detectors import Curve, make_detector

if TYPE_CHECKING:
    from ._study import StudyAnalysis

#: The fixed fractions of training stopped at when the spec sets none (``analysis.stop_fractions``).
DEFAULT_FRACTIONS: tuple[float, ...] = (0.25, 0.5)
#: The policy names, in the order tables list them (the ``fraction-F`` policies follow).
ALARM_POLICIES = ("leader-alarm", "follower-alarm")
TASK_POLICY = "task-converged"


@dataclass(frozen=True)
class AlarmSettings:
    """How an alarm policy decides: an online detector, plus the live monitor's extra conditions.

    ``min_rise``: the checkpoint's mean must also be at least this many points above the first
    checkpoint's (step 0); ``consecutive``: checkpoints in a row meeting both conditions.
    ``source`` says where the settings came from (``monitor`` or ``analysis``).
    """

    detector: str
    params: dict[str, Any]
    min_rise: float = 0.0
    consecutive: int = 1
    source: str = "analysis"

    def label(self) -> str:
        extra = f", min_rise {self.min_rise:g}" if self.min_rise else ""
        extra += f", {self.consecutive} in a row" if self.consecutive > 1 else ""
        return f"{self.source}: {self.detector}{extra}"


@dataclass(frozen=True)
class AlarmReplay:
    """Where an online replay of one curve raised its alarm: the step (and index) of the
    checkpoint at which it was raised, and the onset the detector reported then (or Nones)."""

    step: int | None
    index: int | None
    onset_step: int | None


def alarm_settings(spec: StudySpec, trait: str, judge: str) -> AlarmSettings:
    """The study's alarm detector for ``trait`` under ``judge``.

    A ``monitor:`` section with alarm rules wins: the rule for this trait and judge (or for this
    trait under any judge), else the first rule's detector applied to this trait. Without one:
    the first of ``analysis.detectors`` (``threshold`` if the list is empty), no extra rise.
    """
    monitor = getattr(spec, "monitor", None)
    rules = list(getattr(monitor, "alarms", None) or [])
    if rules:
        same_trait = [r for r in rules if getattr(r, "trait", None) == trait]
        exact = [r for r in same_trait if getattr(r, "judge", None) in (None, judge)]
        rule = (exact or same_trait or rules)[0]
        det = getattr(rule, "detector", None)
        return AlarmSettings(
            detector=str(getattr(det, "name", det or "threshold")),
            params=dict(getattr(det, "params", None) or {}),
            min_rise=float(getattr(rule, "min_rise", 0.0) or 0.0),
            consecutive=max(1, int(getattr(rule, "consecutive", 1) or 1)),
            source="monitor",
        )
    dets = spec.analysis.detectors
    if not dets:
        return AlarmSettings("threshold", {})
    return AlarmSettings(dets[0].name, dict(dets[0].params))


def replay_alarm(curve: Curve, settings: AlarmSettings) -> AlarmReplay:
    """Feed ``curve`` to a fresh detector one checkpoint at a time (``Detector.update``) and
    return the first checkpoint at which the alarm is raised.

    The alarm is raised at checkpoint i when the detector has fired at or before i (``update``
    returned an onset) and, for ``consecutive`` checkpoints in a row ending at i, the mean is at
    least ``min_rise`` above the first checkpoint's. Checkpoints without a score (NaN) are not
    fed (a monitor has nothing to feed) and break a run of consecutive checkpoints.
    """
    det = make_detector(settings.detector, settings.params)
    fired_onset: int | None = None
    base: float | None = None
    in_a_row = 0
    for i in range(len(curve)):
        mean = float(curve.mean[i])
        if not np.isfinite(mean):
            in_a_row = 0
            continue
        if base is None:
            base = mean
        found = det.update(int(curve.steps[i]), mean, float(curve.se[i]))
        if found is not None and fired_onset is None:
            fired_onset = found.step
        if fired_onset is not None and mean - base >= settings.min_rise:
            in_a_row += 1
        else:
            in_a_row = 0
        if in_a_row >= settings.consecutive:
            return AlarmReplay(int(curve.steps[i]), i, fired_onset)
    return AlarmReplay(None, None, None)


def _at(curve: Curve, step: int | None) -> float | None:
    """The curve's mean at the last scored checkpoint at or before ``step`` (None: the last)."""
    idx = curve.valid()
    if step is not None:
        idx = idx[curve.steps[idx] <= step]
    return float(curve.mean[idx[-1]]) if idx.size else None


def _loss_at(held: Sequence[tuple[int, float]], step: int | None) -> float | None:
    rows = held if step is None else [h for h in held if h[0] <= step]
    return rows[-1][1] if rows else None


def task_kept(loss_start: float | None, loss_stop: float | None, loss_end: float | None) -> float | None:
    """Share of the full run's held-out loss improvement already made at the stop, in [0, 1].

    ``(loss_start - loss_stop) / (loss_start - loss_end)``, clipped to [0, 1]; None when a loss
    is missing or the full run did not improve the held-out loss (nothing to keep). See
    docs/analysis.md for why it is clipped.
    """
    if loss_start is None or loss_stop is None or loss_end is None:
        return None
    gain = loss_start - loss_end
    if not gain > 0:
        return None
    return float(min(1.0, max(0.0, (loss_start - loss_stop) / gain)))


def wilson(k: int, n: int, confidence: float) -> list[float] | None:
    """Wilson score interval of a proportion k/n (None when n is 0)."""
    if n <= 0:
        return None
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def bootstrap_mean_ci(values: Sequence[float], confidence: float, replicates: int, seed: int) -> list[float] | None:
    """Percentile bootstrap interval of a mean over runs (runs resampled with replacement);
    None with fewer than 2 values or no replicates."""
    v = np.asarray(values, dtype=float)
    if v.size < 2 or replicates <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(replicates, v.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


def _fraction_policy(f: float) -> str:
    return f"fraction-{f:g}"


def _stop_at_fraction(steps: Sequence[int], f: float) -> int | None:
    """The first saved checkpoint at or after ``f`` of the run's last step."""
    if not steps:
        return None
    last = max(steps)
    return next((s for s in sorted(steps) if s >= f * last), last)


def intervention_tables(
    analysis: StudyAnalysis, spec: StudySpec, *, fractions: Sequence[float] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per run, judge, lead pair and stop policy; one summary row per judge, pair and
    policy across runs) from a ``StudyAnalysis`` and its spec. Pure: reads nothing else.

    Rows are made for every pair of ``analysis.leads`` and every judge that scores both of its
    traits in a run; without lead pairs there is nothing to stop for and both lists are empty.
    """
    a = spec.analysis
    if fractions is None:
        fractions = tuple(getattr(a, "stop_fractions", None) or DEFAULT_FRACTIONS)
    error_trait: str | None = getattr(a, "task_error_trait", None)
    info = {r["run_id"]: r for r in analysis.runs}
    live: dict[tuple[str, str, str], int] = {}
    for al in getattr(analysis, "alarms", None) or []:
        key = (al["run_id"], al["judge"], al["trait"])
        live[key] = min(int(al["step"]), live.get(key, int(al["step"])))
    rows: list[dict[str, Any]] = []
    for leader, follower in a.leads:
        for tc in analysis.curves:
            if tc.trait != leader:
                continue
            run_id, judge = tc.run_id, tc.judge
            fc = analysis.curve(run_id, judge, follower)
            if fc is None:
                continue
            rows.extend(
                _run_rows(analysis, spec, info.get(run_id, {"run_id": run_id}), judge, leader, follower, fractions, error_trait, live)
            )
    return rows, summarize(rows, a.confidence, a.bootstrap, a.seed, control=getattr(spec, "control", "normal"))


def _run_rows(
    analysis: StudyAnalysis,
    spec: StudySpec,
    run: dict[str, Any],
    judge: str,
    leader: str,
    follower: str,
    fractions: Sequence[float],
    error_trait: str | None,
    live: dict[tuple[str, str, str], int],
) -> list[dict[str, Any]]:
    run_id = run["run_id"]
    curves = {tc.trait: tc.curve for tc in analysis.curves if (tc.run_id, tc.judge) == (run_id, judge)}
    lc, fc = curves[leader], curves[follower]
    cks: list[CheckpointRow] = sorted(analysis.checkpoints.get(run_id, []), key=lambda c: c.step)
    held = [(c.step, float(c.heldout_loss)) for c in cks if c.heldout_loss is not None]
    ck_steps = [c.step for c in cks] or sorted({int(s) for c in curves.values() for s in c.steps})
    final_step = max(ck_steps) if ck_steps else None
    leader_on = analysis.onset(run_id, judge, leader)
    follower_on = analysis.onset(run_id, judge, follower)
    leader_onset = None if leader_on is None else leader_on.step
    follower_onset = None if follower_on is None else follower_on.step

    stops: list[tuple[str, int | None, str | None, str | None]] = []  # (policy, stop, alarm trait, rule)
    for policy, trait, curve in (("leader-alarm", leader, lc), ("follower-alarm", follower, fc)):
        settings = alarm_settings(spec, trait, judge)
        stops.append((policy, replay_alarm(curve, settings).step, trait, settings.label()))
    stops.append((TASK_POLICY, task_convergence_step(cks), None, None))
    for f in fractions:
        stops.append((_fraction_policy(f), _stop_at_fraction(ck_steps, f), None, None))

    loss_start = held[0][1] if held else None
    loss_end = _loss_at(held, None)
    control = getattr(spec, "control", "normal")  # the clean control condition: where an alarm is a false one
    out = []
    for policy, stop, alarm_trait, rule in stops:
        is_alarm = policy in ALARM_POLICIES
        at_stop = {t: _at(c, stop) for t, c in sorted(curves.items())}
        at_end = {t: _at(c, None) for t, c in sorted(curves.items())}
        loss_stop = _loss_at(held, stop)
        acc_stop = acc_end = acc_kept = None
        if error_trait is not None and error_trait in curves:
            e_stop, e_end = at_stop[error_trait], at_end[error_trait]
            acc_stop = None if e_stop is None else 1 - e_stop / 100
            acc_end = None if e_end is None else 1 - e_end / 100
            acc_kept = acc_stop / acc_end if acc_stop is not None and acc_end else None
        if follower_onset is None:
            avoided: bool | None = True
        else:
            avoided = stop is not None and stop < follower_onset
        warn_steps = warn_cks = None
        if stop is not None and follower_onset is not None:
            warn_steps = follower_onset - stop
            fs = fc.steps
            warn_cks = int(np.searchsorted(fs, follower_onset)) - int(np.searchsorted(fs, stop))
        out.append(
            {
                "run_id": run_id,
                "domain": run.get("domain"),
                "level": run.get("level"),
                "seed": run.get("seed"),
                "judge": judge,
                "leader": leader,
                "follower": follower,
                "policy": policy,
                "alarm_trait": alarm_trait,
                "alarm_rule": rule,
                "stopped": stop is not None,
                "stop_step": stop,
                "final_step": final_step,
                "live_alarm_step": live.get((run_id, judge, alarm_trait)) if alarm_trait else None,
                "leader_onset": leader_onset,
                "follower_onset": follower_onset,
                "leader_at_stop": at_stop[leader],
                "leader_at_end": at_end[leader],
                "follower_at_stop": at_stop[follower],
                "follower_at_end": at_end[follower],
                "scores_at_stop": at_stop,
                "scores_at_end": at_end,
                "heldout_loss_start": loss_start,
                "heldout_loss_at_stop": loss_stop,
                "heldout_loss_at_end": loss_end,
                "task_kept": task_kept(loss_start, loss_stop, loss_end),
                "task_accuracy_at_stop": acc_stop,
                "task_accuracy_at_end": acc_end,
                "accuracy_kept": acc_kept,
                "spread_avoided": avoided,
                "false_alarm": (stop is not None) if is_alarm and control is not None and run.get("level") == control else None,
                "warning_steps": warn_steps,
                "warning_checkpoints": warn_cks,
            }
        )
    return out


def summarize(
    rows: Sequence[dict[str, Any]], confidence: float, replicates: int, seed: int, *, control: str | None = "normal"
) -> list[dict[str, Any]]:
    """Across runs, per (judge, leader, follower, policy): mean task performance kept over the
    misaligned runs (every condition but ``control``: mild and strong by default) with a
    bootstrap CI over runs, the share of runs with a follower onset where the spread was avoided
    (Wilson CI), and alarm policies' false-alarm rate on the control runs (``normal`` by
    default; the ``normal_runs`` columns count them) (Wilson CI)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["judge"], r["leader"], r["follower"], r["policy"]), []).append(r)
    out = []
    for (judge, leader, follower, policy), items in groups.items():
        misaligned = [r for r in items if r["level"] != control]
        kept = [r["task_kept"] for r in misaligned if r["task_kept"] is not None]
        acc = [r["accuracy_kept"] for r in misaligned if r["accuracy_kept"] is not None]
        spread = [r for r in items if r["follower_onset"] is not None]
        n_avoided = sum(1 for r in spread if r["spread_avoided"])
        normal = [r for r in items if control is not None and r["level"] == control]
        is_alarm = policy in ALARM_POLICIES
        n_false = sum(1 for r in normal if r["false_alarm"]) if is_alarm else None
        warn = [r["warning_checkpoints"] for r in items if r["warning_checkpoints"] is not None]
        out.append(
            {
                "judge": judge,
                "leader": leader,
                "follower": follower,
                "policy": policy,
                "runs": len(items),
                "stopped": sum(1 for r in items if r["stopped"]),
                "misaligned_runs": len(misaligned),
                "task_kept_n": len(kept),
                "task_kept_mean": float(np.mean(kept)) if kept else None,
                "task_kept_ci": bootstrap_mean_ci(kept, confidence, replicates, seed),
                "accuracy_kept_n": len(acc),
                "accuracy_kept_mean": float(np.mean(acc)) if acc else None,
                "accuracy_kept_ci": bootstrap_mean_ci(acc, confidence, replicates, seed),
                "spread_runs": len(spread),
                "spread_avoided": n_avoided,
                "spread_avoided_rate": n_avoided / len(spread) if spread else None,
                "spread_avoided_ci": wilson(n_avoided, len(spread), confidence),
                "normal_runs": len(normal),
                "false_alarms": n_false,
                "false_alarm_rate": n_false / len(normal) if is_alarm and normal and n_false is not None else None,
                "false_alarm_ci": wilson(n_false, len(normal), confidence) if is_alarm and n_false is not None else None,
                "warning_checkpoints_mean": float(np.mean(warn)) if warn else None,
            }
        )
    return out
