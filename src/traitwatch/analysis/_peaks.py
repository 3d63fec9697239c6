"""Peaks, drops and peak-to-peak leads of trait curves, each with a bootstrap CI.

Why beside onsets: the published studies report where a trait is worst (its peak and the
step of it), how far coherence fell ("peak >25% drop") and how much of that is left at
the end, and they compare traits by their peaks as well as by their onsets. All of these
come from the same replicate curves as the per-checkpoint CIs (``SharedBootstrap``: the
same draw of questions and samples for every trait of a run), so a peak-to-peak lead's CI
is paired like the onset lead's. Definitions are in docs/analysis.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._onsets import TraitCurve
from ._samples import SharedBootstrap, TraitSamples
from .detectors import Direction

#: Relative changes need a baseline that is not ~0 (1 point on the 0-100 scale), as ``change_from_baseline_pct``.
MIN_BASELINE = 1.0


@dataclass(frozen=True)
class CurveShape:
    """Peak and drops of one curve (a trait, or one suite's part of it), with CIs.

    ``peak`` is the worst point in the trait's direction: the highest mean for ``up``, the
    lowest for ``down``, the farthest from the baseline for ``both``. Drops are percentages
    of the baseline (step 0): ``largest_drop_pct`` peak-to-trough (the largest fall from any
    checkpoint to any later one), ``final_drop_pct`` baseline to the last checkpoint.
    """

    run_id: str
    judge: str
    trait: str
    suite: str | None
    direction: str
    peak: float | None
    peak_ci: tuple[float, float] | None
    peak_step: int | None
    peak_index: int | None
    peak_step_ci: tuple[float, float] | None
    largest_drop_pct: float | None
    largest_drop_ci: tuple[float, float] | None
    final_drop_pct: float | None
    final_drop_ci: tuple[float, float] | None


def peak_index(means: np.ndarray, direction: Direction) -> np.ndarray:
    """Index of the peak of each row of ``means`` ``[n, T]`` (NaN skipped; -1 for an all-NaN row)."""
    m = np.atleast_2d(np.asarray(means, dtype=float))
    ok = np.isfinite(m).any(axis=1)
    if direction == "up":
        score = np.where(np.isfinite(m), m, -np.inf)
    elif direction == "down":
        score = np.where(np.isfinite(m), -m, -np.inf)
    else:
        base = _first_valid(m)
        score = np.where(np.isfinite(m), np.abs(m - base[:, None]), -np.inf)
    return np.where(ok, np.argmax(score, axis=1), -1)


def _first_valid(m: np.ndarray) -> np.ndarray:
    ok = np.isfinite(m)
    first = np.argmax(ok, axis=1)
    out = m[np.arange(m.shape[0]), first]
    return np.where(ok.any(axis=1), out, np.nan)


def largest_drop(means: np.ndarray) -> np.ndarray:
    """Peak-to-trough fall of each row ``[n, T]`` in points: max over i <= j of m_i - m_j (NaN skipped)."""
    m = np.atleast_2d(np.asarray(means, dtype=float))
    running_max = np.fmax.accumulate(np.where(np.isfinite(m), m, -np.inf), axis=1)
    fall = np.where(np.isfinite(m), running_max - m, -np.inf)
    best = np.max(fall, axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def drops_pct(means: np.ndarray, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest drop, final drop) per row as % of the row's baseline; NaN where the baseline is under ``MIN_BASELINE``.

    ``last`` is the index of the last checkpoint of the point curve, so replicates measure the
    final drop at the same checkpoint.
    """
    m = np.atleast_2d(np.asarray(means, dtype=float))
    base = _first_valid(m)
    ok = np.abs(base) >= MIN_BASELINE
    with np.errstate(invalid="ignore", divide="ignore"):
        largest = np.where(ok, largest_drop(m) / base * 100.0, np.nan)
        final = np.where(ok, (base - m[:, last]) / base * 100.0, np.nan)
    return largest, final


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    v = values[np.isfinite(values)]
    if v.size < 2:
        return None
    a = (1 - confidence) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def replicate_peak_steps(ts: TraitSamples, boot: SharedBootstrap, direction: Direction, n: int) -> np.ndarray:
    """Peak step on each of ``n`` replicate curves (NaN where a replicate has no valid point).

    Replicate ``b`` uses the shared draw ``b`` for every trait of the run, so two traits'
    arrays pair element by element (for the peak-to-peak lead).
    """
    if n <= 0 or boot.n_boot <= 0:
        return np.empty(0)
    reps = boot.replicate_means(ts, n)
    idx = peak_index(reps, direction)
    return np.where(idx >= 0, ts.steps[np.maximum(idx, 0)].astype(float), np.nan)


def curve_shape(
    tc: TraitCurve,
    ts: TraitSamples,
    boot: SharedBootstrap,
    *,
    direction: Direction,
    n_boot: int,
    confidence: float,
    suite: str | None = None,
) -> tuple[CurveShape, np.ndarray]:
    """The curve's peak and drops with CIs, and the replicate peak steps (for peak leads)."""
    c = tc.curve
    valid = c.valid()
    reps = boot.replicate_means(ts, n_boot) if n_boot > 0 and boot.n_boot > 0 else np.empty((0, c.steps.size))
    if valid.size == 0:
        empty = CurveShape(tc.run_id, tc.judge, tc.trait, suite, direction, None, None, None, None, None, None, None, None, None)
        return empty, np.full(reps.shape[0], np.nan)
    pi = int(peak_index(c.mean, direction)[0])
    rep_idx = peak_index(reps, direction) if reps.shape[0] else np.empty(0, dtype=int)
    rows = np.arange(reps.shape[0])
    rep_peak = np.where(rep_idx >= 0, reps[rows, np.maximum(rep_idx, 0)], np.nan) if reps.shape[0] else np.empty(0)
    rep_step = np.where(rep_idx >= 0, c.steps[np.maximum(rep_idx, 0)].astype(float), np.nan) if reps.shape[0] else np.empty(0)
    last = int(valid[-1])
    largest, final = drops_pct(c.mean, last)
    rep_largest, rep_final = drops_pct(reps, last) if reps.shape[0] else (np.empty(0), np.empty(0))
    ok_drop = bool(np.isfinite(largest[0]))
    shape = CurveShape(
        run_id=tc.run_id,
        judge=tc.judge,
        trait=tc.trait,
        suite=suite,
        direction=direction,
        peak=float(c.mean[pi]),
        peak_ci=_interval(rep_peak, confidence),
        peak_step=int(c.steps[pi]),
        peak_index=pi,
        peak_step_ci=_interval(rep_step, confidence),
        largest_drop_pct=float(largest[0]) if ok_drop else None,
        largest_drop_ci=_interval(rep_largest, confidence) if ok_drop else None,
        final_drop_pct=float(final[0]) if ok_drop and np.isfinite(final[0]) else None,
        final_drop_ci=_interval(rep_final, confidence) if ok_drop else None,
    )
    return shape, rep_step


def peak_lead(
    leader: CurveShape,
    follower: CurveShape,
    leader_reps: np.ndarray,
    follower_reps: np.ndarray,
    confidence: float,
) -> tuple[int | None, int | None, tuple[float, float] | None, float | None]:
    """Peak-to-peak lead = peak step(follower) - peak step(leader), in steps and checkpoints,
    with a paired-bootstrap CI and P(leader peaks first). Positive: the leader peaks first."""
    if leader.peak_step is None or follower.peak_step is None:
        return None, None, None, None
    lead = follower.peak_step - leader.peak_step
    lead_ck = None if leader.peak_index is None or follower.peak_index is None else follower.peak_index - leader.peak_index
    n = min(leader_reps.size, follower_reps.size)
    diffs = follower_reps[:n] - leader_reps[:n]
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < 2:
        return lead, lead_ck, None, None
    return lead, lead_ck, _interval(diffs, confidence), float(np.mean(diffs > 0))


def shape_fields(shape: CurveShape | None) -> dict[str, object]:
    """A shape's numbers as summary-row fields (lists for CIs, so CSV and JSON agree)."""

    def ci(v: Sequence[float] | None) -> list[float] | None:
        return None if v is None else [float(x) for x in v]

    if shape is None:
        return {}
    return {
        "direction": shape.direction,
        "peak": shape.peak,
        "peak_ci": ci(shape.peak_ci),
        "peak_step": shape.peak_step,
        "peak_step_ci": ci(shape.peak_step_ci),
        "largest_drop_pct": shape.largest_drop_pct,
        "largest_drop_ci": ci(shape.largest_drop_ci),
        "final_drop_pct": shape.final_drop_pct,
        "final_drop_ci": ci(shape.final_drop_ci),
    }
