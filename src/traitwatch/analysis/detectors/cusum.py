"""One-sided (upward) CUSUM against the baseline.

S_t = max(0, S_{t-1} + (x_t - mu0 - allowance)); an alarm when S_t > h * sd. The onset
is the classic change-point estimate: the checkpoint after the last time S was zero before
the alarm. ``mu0`` and ``sd`` come from the first ``baseline_points`` checkpoints, with
``sd`` floored at ``min_sd`` points so a perfectly flat baseline does not alarm on noise.
The allowance is ``max(k * sd, delta / 2)``: CUSUM is tuned to detect shifts of at least
``delta`` points, so smaller, practically negligible rises do not accumulate.
"""

from __future__ import annotations

from .base import Curve, Detector, Onset, baseline, onset_at


class Cusum(Detector):
    name = "cusum"

    def __init__(self, *, k: float = 0.5, h: float = 8.0, delta: float = 10.0, baseline_points: int = 1, min_sd: float = 3.0) -> None:
        super().__init__()
        self.k = k
        self.h = h
        self.delta = delta
        self.baseline_points = baseline_points
        self.min_sd = min_sd

    def detect(self, curve: Curve) -> Onset:
        mu, sd, used = baseline(curve, self.baseline_points)
        if used.size == 0:
            return onset_at(self.name, curve, None, reason="no valid baseline")
        sd = max(sd, self.min_sd)
        s, last_zero = 0.0, int(used[-1])
        for i in curve.valid():
            if i <= used[-1]:
                continue
            s = max(0.0, s + curve.mean[i] - mu - max(self.k * sd, self.delta / 2))
            if s == 0.0:
                last_zero = int(i)
            elif s > self.h * sd:
                start = next(j for j in curve.valid() if j > last_zero)
                return onset_at(self.name, curve, int(start), baseline=mu, sd=sd, statistic=s, alarm_step=int(curve.steps[i]))
        return onset_at(self.name, curve, None, baseline=mu, sd=sd, statistic=s)
