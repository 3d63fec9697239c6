"""Segmenters: detectors that find every change point, then report the first upward one.

Why a shared base: PELT, binary segmentation and Bayesian online change-point detection all
segment a whole series; on a trait curve the onset is the start of the first segment whose
mean exceeds the previous segment's by more than ``min_rise`` points. On other series
(``bench/tcpd_benchmark.py``) the change points themselves are what is scored.

Noise scale: segmenters see values divided by sigma, the median standard error of the
checkpoint means when the curve has them (bootstrap over questions), else the robust scale
of first differences, floored at ``min_sigma`` points.
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

    @abstractmethod
    def changepoints(self, values: np.ndarray) -> list[int]:
        """Indices (into ``values``, rows are time) where a new segment starts; 0 excluded."""

    def scale(self, curve: Curve, idx: np.ndarray) -> float:
        se = curve.se[idx]
        sigma = float(np.median(se)) if np.any(se > 0) else robust_sigma(curve.mean[idx])
        return max(sigma, self.min_sigma)

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
            if after - before > self.min_rise:
                return onset_at(self.name, curve, int(idx[edges[k]]), sigma=sigma, rise=float(after - before),
                                changepoints=[int(idx[c]) for c in cps])
        return onset_at(self.name, curve, None, sigma=sigma, changepoints=[int(idx[c]) for c in cps])
