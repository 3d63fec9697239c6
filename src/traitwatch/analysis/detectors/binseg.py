"""Binary segmentation (ruptures): greedy splits while a split pays for its penalty.

Same penalty rule as PELT (:mod:`.segment`): ``pen = penalty_scale * log(n)`` on values in the
series' own noise units, ``penalty_scale`` 3 (the modified BIC's per-change cost).
"""

from __future__ import annotations

import ruptures as rpt

from .segment import RupturesSegmenter


class Binseg(RupturesSegmenter):
    name = "binseg"
    algorithm = rpt.Binseg
