"""Progress for every long stage: bars on a terminal, plain lines in a log, with an ETA.

Why: a study stage can take minutes (demo) to days (paper scale); users need to see that it
moves and when it will end. One factory keeps the look the same across stages. On a terminal
it draws rich bars; when the output is not a terminal (a Slurm log, CI, a notebook) bars
would be noise, so it prints one plain line per stage every ``TRAITWATCH_PROGRESS_INTERVAL``
seconds (default 30): done/total, rate and ETA, and a final line.

``TRAITWATCH_PROGRESS``: ``0`` silences bars and the periodic lines (a start and an end line
stay; tests and benchmarks set it), ``1`` draws bars even when the output is not a terminal.

How much is printed (``traitwatch --quiet`` / ``--verbose``, docs/cli.md) is one level set by
:func:`set_verbosity`: ``QUIET`` draws no progress at all (no bars, no lines) and drops the
notes printed with :func:`note`; results, warnings and errors still print. ``NORMAL`` (the
default) hides the warnings of the libraries traitwatch uses (Python warnings from torch,
transformers, peft, ...; transformers' log at error level). ``VERBOSE`` shows them. A
``-W`` option or ``PYTHONWARNINGS`` and a set ``TRANSFORMERS_VERBOSITY`` are left as the user set them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
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

#: Seconds between two plain progress lines of a stage when ``TRAITWATCH_PROGRESS_INTERVAL`` is unset.
DEFAULT_INTERVAL_S = 30.0

#: Verbosity levels (see the module docstring): ``--quiet``, the default, ``--verbose``.
QUIET, NORMAL, VERBOSE = 0, 1, 2
_verbosity = NORMAL
_transformers_env: str | None = None  # the TRANSFORMERS_VERBOSITY value set here, if any


def set_verbosity(level: int) -> None:
    """How much to print from now on: ``QUIET``, ``NORMAL`` or ``VERBOSE`` (module docstring)."""
    global _verbosity, _transformers_env
    _verbosity = level
    if not sys.warnoptions:  # the user's -W / PYTHONWARNINGS win
        if level >= VERBOSE:  # each call puts its filters first, so the last call wins
            warnings.simplefilter("default")
        else:
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"traitwatch(\.|$)")
    if os.environ.get("TRANSFORMERS_VERBOSITY") in (None, _transformers_env):  # else the user's setting stays
        _transformers_env = "warning" if level >= VERBOSE else "error"
        os.environ["TRANSFORMERS_VERBOSITY"] = _transformers_env  # read when transformers is imported
        if "transformers" in sys.modules:  # already imported: its logger now
            sys.modules["transformers"].logging.set_verbosity(logging.WARNING if level >= VERBOSE else logging.ERROR)


def verbosity() -> int:
    """The level :func:`set_verbosity` set (``NORMAL`` until it is called)."""
    return _verbosity


def note(text: str) -> None:
    """An informational line (loading a model, ...): printed unless ``QUIET``."""
    if _verbosity > QUIET:
        console.print(text, markup=False, soft_wrap=True)


def _mode() -> str:
    """``off`` (TRAITWATCH_PROGRESS=0), ``bars`` (a terminal, or TRAITWATCH_PROGRESS=1) or ``lines``."""
    value = os.environ.get("TRAITWATCH_PROGRESS")
    if value == "0":
        return "off"
    if value == "1" or sys.stderr.isatty():
        return "bars"
    return "lines"


def line_interval() -> float:
    """Seconds between plain progress lines: ``TRAITWATCH_PROGRESS_INTERVAL``, else 30 (0: every advance)."""
    raw = os.environ.get("TRAITWATCH_PROGRESS_INTERVAL", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


@contextmanager
def stage_progress(
    description: str, total: int, *, interval: float | None = None, clock: Callable[[], float] = time.monotonic
) -> Iterator[StageBar]:
    """A bar for one stage: ``with stage_progress("train", n) as bar: bar.advance()``.

    When the output is not a terminal it prints plain lines instead (a start line, one line
    every ``interval`` seconds, default :func:`line_interval`, at the next advance, and a final
    line); with ``TRAITWATCH_PROGRESS=0`` only the start and end lines. ``clock``: seconds
    (tests pass a fake one).
    """
    if _verbosity == QUIET:
        yield StageBar(None, None, total)
        return
    mode = _mode()
    if mode == "off":
        bar = StageBar(None, None, total)
        console.print(f"[bold]{description}[/bold]: {total} to do")
        yield bar
        console.print(f"[bold]{description}[/bold]: done ({bar.done} of {bar.total})")
        return
    if mode == "lines":
        lines = PlainLines(description, line_interval() if interval is None else interval, clock)
        bar = StageBar(None, None, total, lines)
        lines.start(total)
        try:
            yield bar
        except BaseException:
            lines.stopped(bar.done, bar.total)
            raise
        lines.final(bar.done, bar.total)
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
        yield StageBar(progress, task, total)


def duration(seconds: float) -> str:
    """A short duration: 45s, 12m05s, 3h02m, 2d04h."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class PlainLines:
    """The plain progress lines of one stage (output that is not a terminal).

    A line: ``DESCRIPTION: DONE/TOTAL (P%), RATE/s, elapsed E, eta T [NOTE]``; the rate is the
    stage's mean so far (done / elapsed) and the ETA is what is left at that rate.
    """

    def __init__(self, description: str, interval: float, clock: Callable[[], float]) -> None:
        self.description = description
        self.interval = interval
        self.clock = clock
        self.t0 = self.last = clock()
        self.note = ""

    def _print(self, text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, total: int) -> None:
        self._print(f"{self.description}: {total} to do")

    def tick(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._print(self.line(done, total, now))

    def line(self, done: int, total: int, now: float) -> str:
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = f"{100 * done / total:.0f}%" if total else "-"
        eta = duration((total - done) / rate) if rate > 0 else "unknown"
        note = f" [{self.note}]" if self.note else ""
        return f"{self.description}: {done}/{total} ({pct}), {rate:.3g}/s, elapsed {duration(elapsed)}, eta {eta}{note}"

    def final(self, done: int, total: int) -> None:
        elapsed = self.clock() - self.t0
        rate = f" ({done / elapsed:.3g}/s)" if elapsed > 0 and done else ""
        self._print(f"{self.description}: done {done}/{total} in {duration(elapsed)}{rate}")

    def stopped(self, done: int, total: int) -> None:
        self._print(f"{self.description}: stopped at {done}/{total} after {duration(self.clock() - self.t0)}")


class StageBar:
    """Handle to advance a stage bar (or its plain lines); a no-op when progress is off."""

    def __init__(self, progress: Progress | None, task: object, total: int = 0, lines: PlainLines | None = None) -> None:
        self._progress = progress
        self._task = task
        self._lines = lines
        self.done = 0
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.advance(self._task, n)  # type: ignore[arg-type]
        if self._lines is not None:
            self._lines.tick(self.done, self.total)

    def grow(self, n: int) -> None:
        """Raise the bar's total by ``n`` (work found while the stage runs, e.g. Ray tasks)."""
        self.total += n
        if self._progress is not None:
            task = next(t for t in self._progress.tasks if t.id == self._task)
            self._progress.update(task.id, total=(task.total or 0) + n)

    def note(self, text: str) -> None:
        """Change the bar's description (e.g. which run is training); plain lines show it in brackets."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)  # type: ignore[arg-type]
        if self._lines is not None:
            self._lines.note = text
