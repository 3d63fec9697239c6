"""Bayesian online change-point detection (Adams & MacKay, 2007).

Model: within a segment, values are Normal with unknown mean and variance (Normal-Gamma
prior, Student-t predictive); a new segment starts at each step with probability
1/``hazard``. The run-length posterior is updated one value at a time, so the method is
online by construction. Change points are read off the MAP run length: whenever it falls,
a segment started at ``t - r_t``. Multivariate series are modelled with independent
dimensions. Values are expected in noise units (the Segmenter base divides by sigma).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from .segment import Segmenter


def run_length_map(y: np.ndarray, hazard: float, mu0: float, kappa0: float, alpha0: float, beta0: float) -> np.ndarray:
    """MAP run length after each observation.

    ``r[t] = k >= 1``: the current segment holds the last k values ``y[t-k+1 .. t]``;
    ``r[t] = 0``: a segment ends with ``y[t]`` and the next one starts at ``t + 1``.
    """
    y = np.asarray(y, dtype=float).reshape(len(y), -1)
    n, d = y.shape
    h = 1.0 / hazard
    log_r = np.array([0.0])
    mu = np.full((1, d), mu0)
    kappa = np.full((1, 1), kappa0)
    alpha = np.full((1, 1), alpha0)
    beta = np.full((1, d), beta0)
    out = np.zeros(n, dtype=int)
    for t in range(n):
        x = y[t]
        nu = 2 * alpha
        scale2 = beta * (kappa + 1) / (alpha * kappa)
        z = (x - mu) ** 2 / (nu * scale2)
        logpred = (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(np.pi * nu * scale2) - (nu + 1) / 2 * np.log1p(z)).sum(axis=1)
        growth = log_r + logpred + np.log1p(-h)
        cp = np.logaddexp.reduce(log_r + logpred + np.log(h))
        log_r = np.concatenate([[cp], growth])
        log_r -= np.logaddexp.reduce(log_r)
        new_mu = (kappa * mu + x) / (kappa + 1)
        new_beta = beta + kappa * (x - mu) ** 2 / (2 * (kappa + 1))
        mu = np.vstack([np.full((1, d), mu0), new_mu])
        beta = np.vstack([np.full((1, d), beta0), new_beta])
        kappa = np.vstack([[[kappa0]], kappa + 1])
        alpha = np.vstack([[[alpha0]], alpha + 0.5])
        out[t] = int(np.argmax(log_r))
    return out


class Bocpd(Segmenter):
    name = "bocpd"

    def __init__(
        self,
        *,
        hazard: float = 100.0,
        kappa0: float = 1.0,
        alpha0: float = 1.0,
        beta0: float = 1.0,
        min_rise: float = 10.0,
        min_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        self.hazard = hazard
        self.kappa0 = kappa0
        self.alpha0 = alpha0
        self.beta0 = beta0
        self.min_rise = min_rise
        self.min_sigma = min_sigma

    def changepoints(self, values: np.ndarray) -> list[int]:
        y = np.asarray(values, dtype=float).reshape(len(values), -1)
        if y.shape[0] < 3:
            return []
        mu0 = float(np.mean(y[: min(5, len(y))]))
        r = run_length_map(y - mu0, self.hazard, 0.0, self.kappa0, self.alpha0, self.beta0)
        cps: set[int] = set()
        for t in range(1, len(r)):
            if r[t] < r[t - 1] + 1:
                start = t - r[t] + 1
                if 0 < start < len(r):
                    cps.add(int(start))
        return sorted(cps)
