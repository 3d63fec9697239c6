"""Binary segmentation (ruptures): greedy splits while a split pays for its penalty.

Same penalty convention as PELT: ``pen = penalty_scale * log(n)`` on values in noise units.
"""

from __future__ import annotations

import numpy as np
import ruptures as rpt

from .segment import Segmenter


class Binseg(Segmenter):
    name = "binseg"

    def __init__(
        self, *, penalty_scale: float = 8.0, min_size: int = 2, min_rise: float = 10.0, min_sigma: float = 1.0, model: str = "l2"
    ) -> None:
        super().__init__()
        self.penalty_scale = penalty_scale
        self.min_size = min_size
        self.min_rise = min_rise
        self.min_sigma = min_sigma
        self.model = model

    def changepoints(self, values: np.ndarray) -> list[int]:
        y = np.asarray(values, dtype=float).reshape(len(values), -1)
        if y.shape[0] < 2 * self.min_size:
            return []
        pen = self.penalty_scale * np.log(y.shape[0]) * y.shape[1]
        bkps = rpt.Binseg(model=self.model, min_size=self.min_size, jump=1).fit(y).predict(pen=pen)
        return [int(b) for b in bkps[:-1]]
