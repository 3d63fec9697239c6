"""Smoothed sustained rise: the rule a careful reader applies by eye.

Smooth the curve with a centred rolling median of ``window`` checkpoints (robust to single
spikes), then report the first checkpoint from which the smoothed curve stays above
``baseline + delta`` for ``persist`` consecutive checkpoints. The baseline is the mean of
the first ``baseline_points`` valid checkpoints. Online, the rolling median uses only the
points seen so far (a trailing window), so alarms come ``window // 2`` checkpoints later.
"""

from __future__ import annotations

import numpy as np

from .base import Curve, Detector, Onset, baseline, onset_at


class Sustained(Detector):
    name = "sustained"

    def __init__(self, *, delta: float = 10.0, window: int = 5, persist: int = 3, baseline_points: int = 1) -> None:
        super().__init__()
        self.delta = delta
        self.window = window
        self.persist = persist
        self.baseline_points = baseline_points

    def detect(self, curve: Curve) -> Onset:
        mu, _, used = baseline(curve, self.baseline_points)
        idx = curve.valid()
        if used.size == 0 or idx.size <= used.size:
            return onset_at(self.name, curve, None, reason="no valid baseline or nothing after it")
        y = curve.mean[idx]
        half = self.window // 2
        smooth = np.array([np.median(y[max(0, i - half) : i + half + 1]) for i in range(y.size)])
        level = mu + self.delta
        run = 0
        for k in range(used.size, y.size):
            run = run + 1 if smooth[k] > level else 0
            if run >= self.persist:
                first = k - self.persist + 1
                return onset_at(
                    self.name,
                    curve,
                    int(idx[first]),
                    baseline=mu,
                    level=level,
                    alarm_step=int(curve.steps[idx[min(k + half, idx.size - 1)]]),
                )
        return onset_at(self.name, curve, None, baseline=mu, level=level)
