"""Curves with CIs, onsets by several detectors with a consensus, and lead times with CIs.

Why together: all three use the same bootstrap replicates (see ``_samples``), so a lead's
CI is computed from paired replicate curves, not from two independent intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._samples import SharedBootstrap, TraitSamples
from .detectors import Curve, Detector, Onset


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
        with np.errstate(invalid="ignore"):
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


def _ci(values: Sequence[int | None], confidence: float) -> tuple[tuple[float, float] | None, float]:
    found = np.array([v for v in values if v is not None], dtype=float)
    frac = found.size / max(1, len(values))
    if found.size < 2:
        return None, frac
    a = (1 - confidence) / 2
    return (float(np.quantile(found, a)), float(np.quantile(found, 1 - a))), frac


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
    cons = consensus([o.step for o in point])
    idx = None if cons is None else int(np.flatnonzero(tc.curve.steps == cons)[0])
    found = [o.step for o in point if o.step is not None]
    ci, frac = _ci(reps.get("consensus", []), confidence)
    ci = ci if cons is not None else None
    spread = (max(found) - min(found)) if found else None
    results.append(
        OnsetResult(
            tc.run_id,
            tc.judge,
            tc.trait,
            "consensus",
            cons,
            idx,
            ci,
            frac,
            {"spread_steps": spread, "methods": {o.detector: o.step for o in point}},
        )
    )
    return results, reps


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
        al = (1 - confidence) / 2
        ci = (float(np.quantile(diffs, al)), float(np.quantile(diffs, 1 - al)))
        p = float(np.mean(diffs > 0))
    frac = len(pairs) / max(1, len(leader_reps))
    return LeadResult(
        leader.run_id, leader.judge, leader.trait, follower.trait, leader.detector, leader.step, follower.step, lead, lead_ck, ci, p, frac
    )
