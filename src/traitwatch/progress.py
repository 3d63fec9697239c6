"""Progress bars with an ETA for every long stage.

Why: a study stage can take minutes (demo) to days (paper scale); users need to see that it
moves and when it will end. One factory keeps the look the same across stages, and it is
silent when output is not a terminal unless asked (CI logs stay readable).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Progress, tables and errors go to stderr; logs (not a terminal) get 160 columns so tables stay readable.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _enabled() -> bool:
    if os.environ.get("TRAITWATCH_PROGRESS") == "0":
        return False
    return sys.stderr.isatty() or os.environ.get("TRAITWATCH_PROGRESS") == "1"


@contextmanager
def stage_progress(description: str, total: int) -> Iterator[StageBar]:
    """A bar for one stage: ``with stage_progress("train", n) as bar: bar.advance()``.

    When the output is not a terminal, it prints a start and an end line instead, so logs
    still say what ran and how long it took.
    """
    if not _enabled():
        bar = StageBar(None, None)
        console.print(f"[bold]{description}[/bold]: {total} to do")
        yield bar
        console.print(f"[bold]{description}[/bold]: done ({bar.done} of {total})")
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield StageBar(progress, task)


class StageBar:
    """Handle to advance a stage bar; a no-op when bars are off."""

    def __init__(self, progress: Progress | None, task: object) -> None:
        self._progress = progress
        self._task = task
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.advance(self._task, n)  # type: ignore[arg-type]

    def note(self, text: str) -> None:
        """Change the bar's description (e.g. which run is training)."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)  # type: ignore[arg-type]
