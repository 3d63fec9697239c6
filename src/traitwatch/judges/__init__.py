"""Judges: (question, answer, trait) -> score 0-100 or None with a reason.

Factories return objects satisfying the one :class:`Judge` protocol:
:func:`openai_judge` (OpenAI-compatible APIs), :func:`local_judge` (a local HF model,
exact distribution over 0..100) and :func:`checker` (reference checkers);
:func:`build_judge` builds any of them from a study's judge spec. A judgment is stored
under :func:`judgment_key`. The scoring math lives in the private modules
(``_numbers``, ``_local``, ``_check``) for tests and benchmarks.
"""

from ._budget import Budget
from ._calibrate import CalibrationItem, CalibrationResult, calibration_requests, load_calibration, score_calibration
from ._check import checker
from ._factory import build_judge
from ._local import local_judge
from ._openai import openai_judge
from ._protocol import Judge, JudgeRequest, Judgment, OnResult, judgment_key

__all__ = [
    "Budget",
    "CalibrationItem",
    "CalibrationResult",
    "Judge",
    "JudgeRequest",
    "Judgment",
    "OnResult",
    "build_judge",
    "calibration_requests",
    "checker",
    "judgment_key",
    "load_calibration",
    "local_judge",
    "openai_judge",
    "score_calibration",
]
