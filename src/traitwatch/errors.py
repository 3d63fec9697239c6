"""One error type for everything a user can fix.

Why: a study runs for hours; when input is wrong the user needs one line that says where
(file, line, key), what was wrong and how to fix it, and the command must exit non-zero
without touching stored work. Internal bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class TraitwatchError(Exception):
    """A problem with the user's input or environment, reported as one line plus a fix.

    Args:
        message: what was wrong, naming the offending value.
        where: the location: ``file``, ``file:line`` or ``file:line: key.path``.
        fix: one sentence telling the user what to do.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as printed by the CLI: ``where: message. Fix: fix``."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text = f"{text.rstrip('.')}. Fix: {self.fix}"
        return text


class ConfigError(TraitwatchError):
    """The study spec (YAML) is malformed or has a bad value."""


class DataError(TraitwatchError):
    """A dataset, trait suite or calibration file is malformed."""


class ModelError(TraitwatchError):
    """A model or adapter cannot be loaded, or does not fit the base model."""


class JudgeError(TraitwatchError):
    """A judge cannot be reached, is misconfigured, or failed its calibration gate."""


class StoreError(TraitwatchError):
    """The study store is locked, unwritable, or was made by a different study spec."""


class BudgetExceeded(JudgeError):
    """The study's spending cap for paid judges was reached; stored work is kept."""
