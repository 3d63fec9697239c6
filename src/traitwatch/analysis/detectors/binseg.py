"""Binary segmentation (ruptures): greedy splits while a split pays for its penalty.

Same penalty convention as PELT (:class:`.segment.RupturesSegmenter`): ``pen = penalty_scale
* log(n)`` on values in noise units.
"""

from __future__ import annotations

import ruptures as rpt

from .segment import RupturesSegmenter


class Binseg(RupturesSegmenter):
    name = "binseg"
    algorithm = rpt.Binseg
