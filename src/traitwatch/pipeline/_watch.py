"""``traitwatch watch``: follow a folder where any trainer writes peft checkpoints and evaluate
each new one on the live monitor's probe set as it lands, in step order.

Why a watcher besides the callbacks: the trainer may be one we cannot plug into (a cluster
job, a colleague's script, a framework without callbacks), so the watcher only reads the
folder the trainer writes. It never owns the trainer: on an alarm whose actions include
``stop`` it writes the stop request (``STOP``) into the folder, which ``TraitwatchCallback``
and ``traitwatch run``'s monitor poll at each save.

Why it is restart-safe: the store is the watcher's memory. A checkpoint's row is written
before it is evaluated, and its answers, judgments and alarms are stored under content keys
by :class:`LiveMonitor`; a restarted watcher replays the stored checkpoints (stored work is
read, not redone, and an alarm already stored is not acted on again) and continues with the
folders after them. So a ``kill -9`` at any moment skips no checkpoint, evaluates none
twice and repeats no judge request that was answered and stored. A stop request lost to a
kill (alarm stored, file not yet written) is written on restart (``watch-stop:<run>`` in the
store's meta says it was).

Why it holds its own lock, not the study's: a study may be training in another process
(SQLite in WAL mode lets both write); two watchers of one run would evaluate the same
checkpoints twice, so ``.traitwatch-watch.lock`` in the watched folder admits one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitwatch.errors import DataError
from traitwatch.store import Store, StudyLock

from ._context import StudyContext
from ._layout import find_checkpoints
from ._watcher import WATCH_LOCK, Watcher, WatchResult, _say, watch_folder


def watch(
    ctx: StudyContext,
    store: Store,
    folder: Path,
    *,
    once: bool = False,
    say: Callable[[str], None] = _say,
    **options: Any,
) -> WatchResult:
    """Follow ``folder`` (a trainer's checkpoint folder) and evaluate each new checkpoint live.

    Holds ``.traitwatch-watch.lock`` in the folder while it runs (a second watcher of the same
    folder is refused and told who holds it); not the study's lock. ``options``: the other
    keyword arguments of :class:`Watcher` (run_id, domain, level, seed, poll, idle_timeout, model).
    """
    folder = Path(folder)
    if not folder.exists():
        if once:
            raise DataError("folder not found", where=str(folder), fix="give the folder the trainer saves its checkpoints in")
        folder.mkdir(parents=True)
        say(f"{folder} does not exist yet: created it, waiting for the trainer's first checkpoint")
    if not folder.is_dir():
        raise DataError("not a folder", where=str(folder), fix="give the folder the trainer saves its checkpoints in")
    folder = watch_folder(folder)
    if not find_checkpoints(folder):
        runs = sorted(p.name for p in folder.iterdir() if p.is_dir() and find_checkpoints(watch_folder(p)))
        if runs:
            raise DataError(
                f"this folder holds several runs ({', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}), a watcher follows one",
                where=str(folder),
                fix="watch one run's folder (start one watcher per run)",
            )
    with StudyLock(folder, name=WATCH_LOCK, what="this checkpoint folder"):
        watcher = Watcher(ctx, store, folder, once=once, say=say, **options)
        return watcher.run()
