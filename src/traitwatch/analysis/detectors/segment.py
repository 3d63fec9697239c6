"""Segmenters: detectors that find every change point, then report the first upward one.

Why a shared base: PELT, binary segmentation and Bayesian online change-point detection all
segment a whole series; on a trait curve the onset is the start of the first segment whose
mean exceeds the previous segment's by more than ``min_rise`` points and stays so for at least
``persist`` checkpoints (3, the persistence the threshold and sustained detectors ask for): a
transient spike that falls back is a real change point but not an onset, and the penalty is
not asked to reject it. On other series
(``bench/tcpd_benchmark.py``) the change points themselves are what is scored.

Penalty rule (issue 14, part 7; its constant fixed from the literature, not by any score):
``pen = penalty_scale * log(n)`` per column on values in noise units, ``penalty_scale`` 3,
the per-change cost of the modified BIC of Zhang & Siegmund (2007) that the R ``changepoint``
package uses by default (its "MBIC" for a mean change, the published TCPD default binseg).
The noise unit is the series' own:

* a trait curve (PELT, binary segmentation): the larger of the median standard error of its
  checkpoint means (bootstrap over questions: sampling noise) and the robust scale of its
  first differences (which also holds the checkpoint-to-checkpoint training jitter the
  standard error misses), floored at ``min_sigma`` points (BOCPD keeps the standard error);
* a bare series (:meth:`Segmenter.segment_series`, no standard errors): each column's standard
  deviation, the noise estimate under the null of no change. Difference-based estimates
  assume independent noise and are far too small on autocorrelated, trending real series
  (docs/analysis.md, Benchmark 2, measures how much they over-segment); the null estimate is
  conservative where changes exist and makes the result invariant to the series' scale.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from .base import Curve, Detector, Onset, onset_at, robust_sigma


def interpolate_missing(values: np.ndarray) -> np.ndarray:
    """Fill NaNs by linear interpolation (edges: nearest value), per column. For segmenting
    real series with gaps (benchmarks); trait curves skip missing checkpoints instead."""
    y = np.array(values, dtype=float, copy=True)
    cols = y.reshape(y.shape[0], -1)
    idx = np.arange(cols.shape[0])
    for j in range(cols.shape[1]):
        ok = np.isfinite(cols[:, j])
        if ok.any() and not ok.all():
            cols[:, j] = np.interp(idx, idx[ok], cols[ok, j])
        elif not ok.any():
            cols[:, j] = 0.0
    return cols.reshape(y.shape)


def standardize(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns become zeros)."""
    y = np.asarray(values, dtype=float).reshape(len(values), -1)
    sd = y.std(axis=0)
    return (y - y.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


class Segmenter(Detector):
    """Base for detectors that segment a series. Subclasses implement ``changepoints``."""

    min_rise: float
    min_sigma: float
    persist: int = 3

    @abstractmethod
    def changepoints(self, values: np.ndarray) -> list[int]:
        """Indices (into ``values``, rows are time) where a new segment starts; 0 excluded."""

    def scale(self, curve: Curve, idx: np.ndarray) -> float:
        se = curve.se[idx]
        sigma = float(np.median(se)) if np.any(se > 0) else robust_sigma(curve.mean[idx])
        return max(sigma, self.min_sigma)

    def segment_series(self, values: np.ndarray) -> list[int]:
        """Change points of a bare series (rows are time; no standard errors): missing values
        interpolated, each column divided by its own standard deviation (the noise unit under
        the null of no change), then :meth:`changepoints`. Multiplying a column by a constant
        leaves the result unchanged."""
        return self.changepoints(standardize(interpolate_missing(np.asarray(values, dtype=float))))

    def lasts(self, y: np.ndarray, edges: list[int], k: int, before: float) -> bool:
        """Whether the segments from ``edges[k]`` on stay more than ``min_rise`` above ``before``
        for at least ``persist`` checkpoints (a ramp split into short pieces counts whole)."""
        j = k
        while j < len(edges) - 1 and y[edges[j] : edges[j + 1]].mean() - before > self.min_rise:
            j += 1
        return edges[j] - edges[k] >= self.persist

    def detect(self, curve: Curve) -> Onset:
        idx = curve.valid()
        if idx.size < 4:
            return onset_at(self.name, curve, None, reason="too few valid checkpoints")
        y = curve.mean[idx]
        sigma = self.scale(curve, idx)
        cps = sorted(c for c in self.changepoints(y / sigma) if 0 < c < y.size)
        edges = [0] + cps + [y.size]
        for k in range(1, len(edges) - 1):
            before = y[edges[k - 1] : edges[k]].mean()
            after = y[edges[k] : edges[k + 1]].mean()
            if after - before > self.min_rise and self.lasts(y, edges, k, before):
                return onset_at(
                    self.name, curve, int(idx[edges[k]]), sigma=sigma, rise=float(after - before), changepoints=[int(idx[c]) for c in cps]
                )
        return onset_at(self.name, curve, None, sigma=sigma, changepoints=[int(idx[c]) for c in cps])


class RupturesSegmenter(Segmenter):
    """A ``ruptures`` search method (``algorithm``) with a linear penalty on values in noise
    units: ``pen = penalty_scale * log(n)`` per column; the default 3 is the modified BIC's
    per-change cost (module docstring). Cost ``model`` is L2 (mean shifts) by default; "normal"
    also catches variance changes. PELT and binary segmentation differ only in the search."""

    algorithm: type

    def __init__(
        self,
        *,
        penalty_scale: float = 3.0,
        min_size: int = 2,
        min_rise: float = 10.0,
        persist: int = 3,
        min_sigma: float = 1.0,
        model: str = "l2",
    ) -> None:
        super().__init__()
        self.penalty_scale = penalty_scale
        self.min_size = min_size
        self.min_rise = min_rise
        self.persist = persist
        self.min_sigma = min_sigma
        self.model = model

    def scale(self, curve: Curve, idx: np.ndarray) -> float:
        """Noise unit of a trait curve: max(median SE, first-difference scale, ``min_sigma``)."""
        se = curve.se[idx]
        sampling = float(np.median(se)) if np.any(se > 0) else 0.0
        return max(sampling, robust_sigma(curve.mean[idx]), self.min_sigma)

    def changepoints(self, values: np.ndarray) -> list[int]:
        y = np.asarray(values, dtype=float).reshape(len(values), -1)
        if y.shape[0] < 2 * self.min_size:
            return []
        pen = self.penalty_scale * np.log(y.shape[0]) * y.shape[1]
        bkps = self.algorithm(model=self.model, min_size=self.min_size, jump=1).fit(y).predict(pen=pen)
        return [int(b) for b in bkps[:-1]]
