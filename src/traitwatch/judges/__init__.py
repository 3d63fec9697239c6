"""Judges: (question, answer, trait) -> score 0-100 or None with a reason.

Factories return objects satisfying the one :class:`Judge` protocol:
:func:`openai_judge` (OpenAI-compatible APIs), :func:`local_judge` (a local HF model,
exact distribution over 0..100) and :func:`checker` (reference checkers).
"""

from ._budget import Budget
from ._calibrate import CalibrationItem, CalibrationResult, calibration_requests, load_calibration, score_calibration
from ._check import checker, claimed_number
from ._local import NumberTrie, local_judge, number_distributions
from ._numbers import (
    Scored,
    looks_digit_split,
    parse_int_token,
    top_logprob_distribution,
    weighted_mean,
    yes_no_score,
)
from ._openai import openai_judge, read_api_key
from ._protocol import Judge, JudgeRequest, Judgment, OnResult

__all__ = [
    "Budget",
    "CalibrationItem",
    "CalibrationResult",
    "calibration_requests",
    "load_calibration",
    "score_calibration",
    "Judge",
    "JudgeRequest",
    "Judgment",
    "NumberTrie",
    "OnResult",
    "Scored",
    "checker",
    "claimed_number",
    "local_judge",
    "looks_digit_split",
    "number_distributions",
    "openai_judge",
    "parse_int_token",
    "read_api_key",
    "top_logprob_distribution",
    "weighted_mean",
    "yes_no_score",
]
