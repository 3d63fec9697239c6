"""PELT change points (ruptures) on the mean curve; the onset is the first upward change.

Penalty: ``pen = penalty_scale * sigma^2 * log(n)``, a BIC-style penalty on the L2 cost
that adapts to each curve's noise. sigma is the median standard error of the checkpoint
means when the curve carries them (bootstrap over questions), else the robust scale of
first differences; floored at ``min_sigma`` points, because step-like curves of a few
binary scores have mostly zero differences and would otherwise get no penalty at all. A change counts as an onset when the segment after it
is higher than the segment before by more than ``min_rise`` points.
"""

from __future__ import annotations

import numpy as np
import ruptures as rpt

from .base import Curve, Detector, Onset, onset_at, robust_sigma


def segments_rises(values: np.ndarray, bkps: list[int]) -> list[tuple[int, float]]:
    """For each change point (start index of a new segment): (index, mean after - mean before)."""
    out = []
    edges = [0] + list(bkps)
    for k in range(1, len(edges) - 1):
        before = values[edges[k - 1] : edges[k]]
        after = values[edges[k] : edges[k + 1]]
        out.append((edges[k], float(np.mean(after) - np.mean(before))))
    return out


class Pelt(Detector):
    name = "pelt"

    def __init__(
        self, *, penalty_scale: float = 2.0, min_size: int = 2, min_rise: float = 10.0, min_sigma: float = 1.0, model: str = "l2"
    ) -> None:
        super().__init__()
        self.min_sigma = min_sigma
        self.penalty_scale = penalty_scale
        self.min_size = min_size
        self.min_rise = min_rise
        self.model = model

    def detect(self, curve: Curve) -> Onset:
        idx = curve.valid()
        if idx.size < 2 * self.min_size:
            return onset_at(self.name, curve, None, reason="too few valid checkpoints")
        y = curve.mean[idx]
        se = curve.se[idx]
        sigma = float(np.median(se)) if np.any(se > 0) else robust_sigma(y)
        sigma = max(sigma, self.min_sigma)
        pen = self.penalty_scale * sigma**2 * np.log(y.size)
        bkps = rpt.Pelt(model=self.model, min_size=self.min_size, jump=1).fit(y.reshape(-1, 1)).predict(pen=pen)
        for pos, rise in segments_rises(y, bkps):
            if rise > self.min_rise:
                return onset_at(self.name, curve, int(idx[pos]), penalty=pen, sigma=sigma, rise=rise, breakpoints=[int(idx[b]) for b in bkps[:-1]])
        return onset_at(self.name, curve, None, penalty=pen, sigma=sigma, breakpoints=[int(idx[b]) for b in bkps[:-1]])
