"""The study store (SQLite), content-addressed keys, and the one-process-per-study lock."""

from ._columns import ScoreColumns, ScoreRow
from ._db import CheckpointAnswers, CheckpointRow, GenerationRow, JudgmentRow, Store
from ._keys import content_key
from ._lock import StudyLock

__all__ = [
    "CheckpointAnswers",
    "CheckpointRow",
    "GenerationRow",
    "JudgmentRow",
    "ScoreColumns",
    "ScoreRow",
    "Store",
    "StudyLock",
    "content_key",
]
