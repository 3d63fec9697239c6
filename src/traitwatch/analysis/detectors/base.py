"""The detector contract: fit on a trait curve, give the onset with its evidence.

Conventions (stated here once; every detector, table and plot follows them):

* A curve is a sequence of checkpoints in increasing training ``step``; index 0 is the
  baseline (step 0, the untouched model) when the study evaluated it. Means may be NaN
  (a checkpoint with no valid score); detectors skip NaN points, they never fill them with
  invented values.
* The **onset** is the training step of the first checkpoint at which the detector judges
  the trait to have started rising (an upward change only), or None. Its ``index`` is the
  position in the curve. A trait that goes bad by declining (coherence) or either way is
  handled outside the detectors, by mirroring the curve (``direction.detect_directed``), so
  every detector honours a trait's direction with this one code path.
* **Lead time** of trait A over trait B = onset(B) - onset(A), in steps and in checkpoints.
  Positive means A rises first (A leads). It is undefined when either onset is None.
* ``fit(curve)`` is offline (the whole curve); ``update(step, mean, se)`` is online, one
  checkpoint at a time, and returns the onset the first time one is detected, using only
  points seen so far (what a live monitor can know). ``update`` after ``reset`` on every
  point of a curve gives the online detection step (``alarm``), which is never earlier
  than the change it reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Curve:
    """A trait curve: per checkpoint, the step, the mean score, its standard error and CI."""

    steps: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    n: np.ndarray | None = None

    @classmethod
    def from_values(cls, steps: Any, mean: Any, se: Any | None = None) -> Curve:
        s = np.asarray(steps, dtype=int)
        m = np.asarray(mean, dtype=float)
        e = np.zeros_like(m) if se is None else np.asarray(se, dtype=float)
        if not (s.shape == m.shape == e.shape) or s.ndim != 1:
            raise ValueError("steps, mean and se must be 1-d and of equal length")
        if s.size and np.any(np.diff(s) <= 0):
            raise ValueError("steps must be strictly increasing")
        return cls(s, m, e)

    def __len__(self) -> int:
        return int(self.steps.size)

    def valid(self) -> np.ndarray:
        """Indices of checkpoints with a finite mean."""
        return np.flatnonzero(np.isfinite(self.mean))


@dataclass(frozen=True)
class Onset:
    """A detector's answer for one curve."""

    detector: str
    step: int | None
    index: int | None
    alarm_step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def onset_at(detector: str, curve: Curve, index: int | None, **evidence: Any) -> Onset:
    if index is None:
        return Onset(detector, None, None, None, evidence)
    return Onset(detector, int(curve.steps[index]), int(index), evidence.pop("alarm_step", None), evidence)


class Detector(ABC):
    """Base class. Subclasses take explicit keyword parameters in ``__init__`` (no **kwargs)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._mean: list[float] = []
        self._se: list[float] = []
        self._fired: Onset | None = None

    @abstractmethod
    def detect(self, curve: Curve) -> Onset:
        """The onset of a whole curve (offline)."""

    def fit(self, curve: Curve) -> Detector:
        self.result_ = self.detect(curve)
        return self

    def onset(self) -> Onset:
        return self.result_

    def reset(self) -> None:
        self._steps, self._mean, self._se, self._fired = [], [], [], None

    def update(self, step: int, mean: float, se: float = 0.0) -> Onset | None:
        """Add one checkpoint; return the onset the first time one is found (online).

        The default re-runs ``detect`` on the prefix seen so far, which is exact for every
        detector here; detectors with a cheaper recursion override it.
        """
        self._steps.append(int(step))
        self._mean.append(float(mean))
        self._se.append(float(se))
        if self._fired is not None:
            return None
        found = self.detect(Curve.from_values(self._steps, self._mean, self._se))
        if found.step is None:
            return None
        self._fired = Onset(found.detector, found.step, found.index, int(step), found.evidence)
        return self._fired

    def params(self) -> dict[str, Any]:
        """The constructor parameters (for reports and provenance)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}


def robust_sigma(values: np.ndarray) -> float:
    """Noise scale from first differences (MAD / 0.6745 / sqrt 2): robust to steps and trends."""
    v = values[np.isfinite(values)]
    if v.size < 3:
        return 0.0
    d = np.diff(v)
    return float(np.median(np.abs(d - np.median(d))) / 0.6745 / np.sqrt(2))


def baseline(curve: Curve, points: int) -> tuple[float, float, np.ndarray]:
    """(baseline mean, baseline noise sd, indices used) from the first ``points`` valid checkpoints."""
    idx = curve.valid()[:points]
    if idx.size == 0:
        return float("nan"), 0.0, idx
    mu = float(np.mean(curve.mean[idx]))
    sd_between = float(np.std(curve.mean[idx], ddof=1)) if idx.size > 1 else 0.0
    sd_se = float(np.sqrt(np.mean(curve.se[idx] ** 2)))
    return mu, max(sd_between, sd_se), idx
