"""One trait's scores split by prompt suite: coherence on evil prompts vs on hallucination prompts.

Why: a rubric-only trait (``extra_traits``, e.g. coherence) is judged on the answers of every
suite, and pooling them hides what the published study reports per suite (medical: coherence
-25% on evil prompts, -11% on hallucination prompts). Each suite's part is an ordinary
``TraitSamples`` (same steps, that suite's questions), so its curve, onsets, peak and drops
come from the same functions and the same shared bootstrap draws as the pooled curve.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._samples import TraitSamples
from .detectors import Curve


def suites_of(ts: TraitSamples) -> list[str]:
    """The prompt suites whose questions a trait was scored on, sorted."""
    return sorted({suite for suite, _ in ts.units})


def split_by_suite(ts: TraitSamples) -> dict[str, TraitSamples]:
    """Per suite, the trait's samples on that suite's questions; empty when the trait was
    scored on one suite only (its pooled curve is then already that suite's)."""
    names = suites_of(ts)
    if len(names) < 2:
        return {}
    out = {}
    for suite in names:
        keep = np.array([u[0] == suite for u in ts.units])
        out[suite] = replace(ts, units=tuple(u for u, k in zip(ts.units, keep, strict=True) if k), X=ts.X[:, keep, :])
    return out


@dataclass(frozen=True)
class SuiteCurve:
    """One suite's part of a trait's curve (same meaning as ``TraitCurve``, plus the suite)."""

    run_id: str
    judge: str
    trait: str
    suite: str
    curve: Curve
