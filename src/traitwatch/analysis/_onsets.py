"""Curves with CIs, onsets by several detectors with a consensus, and lead times with CIs.

Why together: all three use the same bootstrap replicates (see ``_samples``), so a lead's
CI is computed from paired replicate curves, not from two independent intervals.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._samples import SharedBootstrap, TraitSamples
from .detectors import Curve, Detector, Direction, Onset, mirrored, unmirror_evidence


@dataclass(frozen=True)
class TraitCurve:
    run_id: str
    judge: str
    trait: str
    curve: Curve


@dataclass(frozen=True)
class OnsetResult:
    run_id: str
    judge: str
    trait: str
    detector: str
    step: int | None
    index: int | None
    ci: tuple[float, float] | None
    found_fraction: float
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Which change counted as the onset: up (a rise), down (a decline) or both (the earlier).
    direction: str = "up"
    #: The onset's step as a share of the run's training steps, in percent (docs/analysis.md).
    pct_of_training: float | None = None
    #: The prompt suite when the curve is one suite's part of a trait scored on several suites.
    suite: str | None = None


@dataclass(frozen=True)
class LeadResult:
    """Lead of ``leader`` over ``follower`` = onset(follower) - onset(leader); positive: leader first."""

    run_id: str
    judge: str
    leader: str
    follower: str
    detector: str
    leader_onset: int | None
    follower_onset: int | None
    lead_steps: int | None
    lead_checkpoints: int | None
    ci_steps: tuple[float, float] | None
    p_leads: float | None
    defined_fraction: float
    #: Peak-to-peak lead = peak step(follower) - peak step(leader), beside the onset lead (``_peaks``).
    peak_lead_steps: int | None = None
    peak_lead_checkpoints: int | None = None
    peak_lead_ci: tuple[float, float] | None = None
    p_peaks_first: float | None = None


def consensus(onsets: Sequence[int | None]) -> int | None:
    """Median of the detectors' onsets when at least half of them found one, else None.

    The median of an even count is the lower middle value, so the consensus is always a
    step some detector reported (a real checkpoint).
    """
    found = sorted(o for o in onsets if o is not None)
    if not onsets or len(found) * 2 < len(onsets):
        return None
    return found[(len(found) - 1) // 2]


def trait_curve(ts: TraitSamples, boot: SharedBootstrap, confidence: float) -> TraitCurve:
    mean = ts.means()
    reps = boot.replicate_means(ts) if boot.n_boot > 0 else np.empty((0, mean.size))
    alpha = (1 - confidence) / 2
    if reps.shape[0] >= 2:
        # checkpoints with no scored answer (all replicates NaN) are expected: numpy warns, we don't
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            se = np.nanstd(reps, axis=0, ddof=1)
            lo = np.nanquantile(reps, alpha, axis=0)
            hi = np.nanquantile(reps, 1 - alpha, axis=0)
    else:
        se = np.zeros_like(mean)
        lo, hi = mean.copy(), mean.copy()
    se = np.where(np.isfinite(se), se, 0.0)
    return TraitCurve(ts.run_id, ts.judge, ts.trait, Curve(ts.steps, mean, se, lo, hi, ts.counts()))


def replicate_onsets(
    ts: TraitSamples, curve: Curve, boot: SharedBootstrap, detectors: Sequence[Detector], n: int
) -> dict[str, list[int | None]]:
    """Onset step per detector (and 'consensus') on each of ``n`` bootstrap replicate curves."""
    reps = boot.replicate_means(ts, n)
    out: dict[str, list[int | None]] = {d.name: [] for d in detectors}
    out["consensus"] = []
    for b in range(reps.shape[0]):
        c = Curve(curve.steps, reps[b], curve.se)
        found = [d.detect(c).step for d in detectors]
        for d, s in zip(detectors, found, strict=False):
            out[d.name].append(s)
        out["consensus"].append(consensus(found))
    return out


def nearest_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The range between two replicate values whose share of the replicates is nearest to
    ``confidence``; on a tie the larger share, then the narrower range, then the one centred
    nearest the replicates' median.

    Why: onsets and leads are discrete (checkpoint steps) and their replicates pile up on one
    to three checkpoints, often against a bound (no onset before the first checkpoint after
    step 0). A range must hold or leave out a whole checkpoint's pile, so "at least 95%" can
    mean 99-100%: the equal-tailed percentile interval covered the planted truth in 0.999
    (onset) and 0.996 (lead) of ``bench/ci_coverage.py``'s cases, the shortest range holding at
    least 95% in 0.991 and 0.990, above the 0.90-0.99 target. Taking the share nearest 95%
    (possibly a little under it, as a mid-p interval does for a discrete statistic) gave 0.978
    and 0.968 (docs/analysis.md, "Checked uncertainty"). For continuous values (every
    replicate distinct) it is the shortest range holding ``round(confidence * n)`` of them.
    """
    f = np.sort(np.asarray(values, dtype=float))
    if f.size < 2:
        return None
    u, first = np.unique(f, return_index=True)
    end = np.append(first[1:], f.size)  # one past the last replicate equal to each distinct value
    i, j = np.triu_indices(u.size)
    share = (end[j] - first[i]) / f.size
    miss = np.round(np.abs(share - confidence), 12)
    off = np.abs((u[i] + u[j]) / 2 - np.median(f))
    k = int(np.lexsort((off, u[j] - u[i], -share, miss))[0])
    return float(u[i[k]]), float(u[j[k]])


def _ci(values: Sequence[int | None], confidence: float) -> tuple[tuple[float, float] | None, float]:
    """(nearest-to-nominal interval of the replicates that found an onset, share of replicates that did)."""
    found = np.array([v for v in values if v is not None], dtype=float)
    frac = found.size / max(1, len(values))
    return nearest_interval(found, confidence), frac


def detect_onsets(
    tc: TraitCurve,
    ts: TraitSamples,
    boot: SharedBootstrap,
    detectors: Sequence[Detector],
    *,
    n_onset_boot: int,
    confidence: float,
) -> tuple[list[OnsetResult], dict[str, list[int | None]]]:
    """Onsets per detector plus the consensus, each with a bootstrap CI over questions."""
    point: list[Onset] = [d.detect(tc.curve) for d in detectors]
    reps = replicate_onsets(ts, tc.curve, boot, detectors, n_onset_boot) if n_onset_boot > 0 else {}
    results = []
    for o in point:
        ci, frac = _ci(reps.get(o.detector, []), confidence)
        ci = ci if o.step is not None else None
        results.append(OnsetResult(tc.run_id, tc.judge, tc.trait, o.detector, o.step, o.index, ci, frac, o.evidence))
    results.append(_consensus_result(tc, {o.detector: o.step for o in point}, reps.get("consensus", []), confidence))
    return results, reps


def _consensus_result(
    tc: TraitCurve, methods: dict[str, int | None], replicates: Sequence[int | None], confidence: float, direction: str = "up"
) -> OnsetResult:
    """The consensus row of a trait curve: the consensus of the detectors' onsets (``methods``),
    its checkpoint, its CI from the consensus ``replicates``, and the spread between methods."""
    cons = consensus(list(methods.values()))
    idx = None if cons is None else int(np.flatnonzero(tc.curve.steps == cons)[0])
    found = [s for s in methods.values() if s is not None]
    ci, frac = _ci(replicates, confidence)
    evidence = {"spread_steps": (max(found) - min(found)) if found else None, "methods": methods}
    ci = ci if cons is not None else None
    return OnsetResult(tc.run_id, tc.judge, tc.trait, "consensus", cons, idx, ci, frac, evidence, direction=direction)


def lead_time(
    leader: OnsetResult,
    follower: OnsetResult,
    leader_reps: Sequence[int | None],
    follower_reps: Sequence[int | None],
    steps: np.ndarray,
    confidence: float,
) -> LeadResult:
    """Lead of ``leader`` over ``follower`` with a paired-bootstrap CI and P(leader first)."""
    lead = None if leader.step is None or follower.step is None else follower.step - leader.step
    lead_ck = None
    if leader.index is not None and follower.index is not None:
        lead_ck = follower.index - leader.index
    pairs = [(a, b) for a, b in zip(leader_reps, follower_reps, strict=False) if a is not None and b is not None]
    diffs = np.array([b - a for a, b in pairs], dtype=float)
    ci = None
    p = None
    if lead is not None and diffs.size >= 2:
        ci = nearest_interval(diffs, confidence)
        p = float(np.mean(diffs > 0))
    frac = len(pairs) / max(1, len(leader_reps))
    return LeadResult(
        leader.run_id, leader.judge, leader.trait, follower.trait, leader.detector, leader.step, follower.step, lead, lead_ck, ci, p, frac
    )


def _mirror_samples(tc: TraitCurve, ts: TraitSamples) -> tuple[TraitCurve, TraitSamples]:
    return TraitCurve(tc.run_id, tc.judge, tc.trait, mirrored(tc.curve)), replace(ts, X=-ts.X)


def _unmirror(o: OnsetResult) -> OnsetResult:
    return replace(o, evidence=unmirror_evidence(o.evidence), direction="down")


def _earlier(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def detect_onsets_directed(
    tc: TraitCurve,
    ts: TraitSamples,
    boot: SharedBootstrap,
    detectors: Sequence[Detector],
    *,
    direction: Direction,
    n_onset_boot: int,
    confidence: float,
) -> tuple[list[OnsetResult], dict[str, list[int | None]]]:
    """``detect_onsets`` for a trait that goes bad in ``direction``.

    Why mirroring: every detector finds rises (``detectors.base``). ``down`` runs them on the
    mirrored curve and the mirrored samples (``-score``), so point onsets and their bootstrap
    replicates see the same orientation; ``up`` is ``detect_onsets`` unchanged (rising traits
    keep their results). ``both`` runs both orientations and keeps, per detector and per
    replicate, the earlier onset; the consensus is recomputed from those.
    """
    if direction == "up":
        return detect_onsets(tc, ts, boot, detectors, n_onset_boot=n_onset_boot, confidence=confidence)
    mtc, mts = _mirror_samples(tc, ts)
    down, down_reps = detect_onsets(mtc, mts, boot, detectors, n_onset_boot=n_onset_boot, confidence=confidence)
    down = [_unmirror(o) for o in down]
    if direction == "down":
        return down, down_reps
    up, up_reps = detect_onsets(tc, ts, boot, detectors, n_onset_boot=n_onset_boot, confidence=confidence)
    results: list[OnsetResult] = []
    reps: dict[str, list[int | None]] = {}
    for u, d in zip(up[:-1], down[:-1], strict=True):
        pick = d if d.step is not None and (u.step is None or d.step < u.step) else u
        reps[u.detector] = [_earlier(a, b) for a, b in zip(up_reps.get(u.detector, []), down_reps.get(u.detector, []), strict=False)]
        ci, frac = _ci(reps[u.detector], confidence)
        results.append(replace(pick, ci=ci if pick.step is not None else None, found_fraction=frac))
    names = [d.name for d in detectors]
    reps["consensus"] = [consensus([reps[n][b] for n in names]) for b in range(min((len(reps[n]) for n in names), default=0))]
    results.append(_consensus_result(tc, {o.detector: o.step for o in results}, reps["consensus"], confidence, direction="both"))
    return results, reps
