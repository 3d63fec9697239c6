"""Bayesian online change-point detection (Adams & MacKay, 2007).

Model: within a segment, values are Normal with unknown mean and variance (Normal-Gamma
prior centred on the series mean, vague in the mean: ``kappa0`` small; Student-t
predictive); a new segment starts at each step with probability 1/``hazard``. The run-length
posterior is updated one value at a time, so the method is
online by construction. Change points are read off the MAP run length: whenever it falls,
a segment started at ``t - r_t``. Multivariate series are modelled with independent
dimensions. Values are expected in noise units (the Segmenter base divides by sigma).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from .segment import Segmenter


def _log_student(x: np.ndarray, mu: np.ndarray, kappa: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Log predictive density of x under Normal-Gamma parameters, summed over dimensions."""
    nu = 2 * alpha
    scale2 = beta * (kappa + 1) / (alpha * kappa)
    z = (x - mu) ** 2 / (nu * scale2)
    return (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(np.pi * nu * scale2) - (nu + 1) / 2 * np.log1p(z)).sum(axis=-1)


def run_length_map(y: np.ndarray, hazard: float, mu0: float, kappa0: float, alpha0: float, beta0: float) -> np.ndarray:
    """MAP run length after each observation: ``r[t] = k`` means the current segment holds
    ``y[t-k .. t]`` (k = 0: ``y[t]`` starts a new segment).

    The changepoint branch scores ``y[t]`` under the prior predictive (the new segment's
    first value), so a change is placed at the first value after it.
    """
    y = np.asarray(y, dtype=float).reshape(len(y), -1)
    n, d = y.shape
    log_h, log_1mh = np.log(1.0 / hazard), np.log1p(-1.0 / hazard)
    prior = (np.full((1, d), mu0), np.full((1, 1), kappa0), np.full((1, 1), alpha0), np.full((1, d), beta0))
    log_r = np.zeros(0)
    mu = np.zeros((0, d))
    kappa = np.zeros((0, 1))
    alpha = np.zeros((0, 1))
    beta = np.zeros((0, d))
    out = np.zeros(n, dtype=int)
    for t in range(n):
        x = y[t]
        growth = log_r + _log_student(x, mu, kappa, alpha, beta) + log_1mh
        total = np.logaddexp.reduce(log_r) if log_r.size else 0.0
        cp = total + (log_h if log_r.size else 0.0) + _log_student(x, *prior)[0]
        log_r = np.concatenate([[cp], growth])
        log_r -= np.logaddexp.reduce(log_r)
        mu = np.vstack([prior[0], mu])
        kappa = np.vstack([prior[1], kappa])
        alpha = np.vstack([prior[2], alpha])
        beta = np.vstack([prior[3], beta])
        beta = beta + kappa * (x - mu) ** 2 / (2 * (kappa + 1))
        mu = (kappa * mu + x) / (kappa + 1)
        kappa = kappa + 1
        alpha = alpha + 0.5
        out[t] = int(np.argmax(log_r))
    return out


class Bocpd(Segmenter):
    name = "bocpd"

    def __init__(
        self,
        *,
        hazard: float = 1000.0,
        kappa0: float = 0.01,
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
        r = run_length_map(y - y.mean(axis=0), self.hazard, 0.0, self.kappa0, self.alpha0, self.beta0)
        cps: set[int] = set()
        for t in range(1, len(r)):
            if r[t] < r[t - 1] + 1:
                start = t - r[t]
                if 0 < start < len(r):
                    cps.add(int(start))
        return sorted(cps)
