"""The study store (SQLite), content-addressed keys, and the one-process-per-study lock."""

from ._db import SCHEMA_VERSION, CheckpointRow, GenerationRow, JudgmentRow, ScoreRow, Store
from ._keys import content_key
from ._lock import StudyLock

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointRow",
    "GenerationRow",
    "JudgmentRow",
    "ScoreRow",
    "Store",
    "StudyLock",
    "content_key",
]
