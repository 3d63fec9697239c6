"""PELT (ruptures): exact optimal segmentation under a linear penalty.

Penalty and cost as in :class:`.segment.RupturesSegmenter`: ``pen = penalty_scale * log(n)``
on values in noise units, L2 cost by default.
"""

from __future__ import annotations

import ruptures as rpt

from .segment import RupturesSegmenter


class Pelt(RupturesSegmenter):
    name = "pelt"
    algorithm = rpt.Pelt
