"""PELT (ruptures): exact optimal segmentation under a linear penalty.

Penalty and cost as in :mod:`.segment`: ``pen = penalty_scale * log(n)`` on values in the
series' own noise units, ``penalty_scale`` 3 (the modified BIC's per-change cost), L2 cost.
"""

from __future__ import annotations

import ruptures as rpt

from .segment import RupturesSegmenter


class Pelt(RupturesSegmenter):
    name = "pelt"
    algorithm = rpt.Pelt
