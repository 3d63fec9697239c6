"""Threshold over the baseline: the simplest rule a reviewer can check by eye.

Onset = first checkpoint after the baseline whose mean exceeds
``baseline + max(delta, sigmas * sd)`` and stays above it for ``persist`` consecutive valid
checkpoints, where the baseline is the mean of the first ``baseline_points`` valid
checkpoints (step 0 by default) and ``sd`` its noise (the spread of those points or their
standard errors, whichever is larger).
"""

from __future__ import annotations

from .base import Curve, Detector, Onset, baseline, onset_at


class Threshold(Detector):
    name = "threshold"

    def __init__(self, *, delta: float = 10.0, sigmas: float = 3.0, persist: int = 3, baseline_points: int = 1) -> None:
        super().__init__()
        self.delta = delta
        self.sigmas = sigmas
        self.persist = persist
        self.baseline_points = baseline_points

    def detect(self, curve: Curve) -> Onset:
        mu, sd, used = baseline(curve, self.baseline_points)
        if used.size == 0:
            return onset_at(self.name, curve, None, reason="no valid baseline")
        level = mu + max(self.delta, self.sigmas * sd)
        after = [i for i in curve.valid() if i > used[-1]]
        run = 0
        for k, i in enumerate(after):
            run = run + 1 if curve.mean[i] > level else 0
            if run >= self.persist:
                first = after[k - self.persist + 1]
                return onset_at(self.name, curve, first, baseline=mu, baseline_sd=sd, threshold=level, alarm_step=int(curve.steps[i]))
        return onset_at(self.name, curve, None, baseline=mu, baseline_sd=sd, threshold=level)
