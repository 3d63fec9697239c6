"""One process per study: an advisory lock on the study folder.

Why: two processes writing one study (a user starting the same command twice, a cluster
job array with a bad index) would interleave training checkpoints and waste judge calls.
The second one is told who holds the lock. The OS drops the lock when the holder dies,
even by ``kill -9``, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from traitwatch.errors import StoreError


class StudyLock:
    """``with StudyLock(folder): ...`` holds the study exclusively or raises StoreError.

    ``name`` and ``what`` give the same lock to other things held by one process at a time:
    ``traitwatch watch`` holds ``.traitwatch-watch.lock`` in the checkpoint folder it follows.
    """

    def __init__(self, folder: Path, *, name: str = ".traitwatch.lock", what: str = "the study") -> None:
        self.path = Path(folder) / name
        self.what = what
        self._fh: object | None = None

    def __enter__(self) -> StudyLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(
                f"the output folder is not writable ({exc.strerror})",
                where=str(self.path.parent),
                fix="choose a writable output_dir",
            ) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']} since {info['since']} ({info['command']})"
            except (ValueError, KeyError):
                who = "another process"
            raise StoreError(
                f"{self.what} is in use by {who}",
                where=str(self.path.parent),
                fix="wait for it to finish, or stop it; the lock is released when that process exits",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
                }
            )
        )
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fh is not None:
            fh = self._fh
            fh.truncate(0)  # type: ignore[attr-defined]
            fcntl.flock(fh, fcntl.LOCK_UN)  # type: ignore[arg-type]
            fh.close()  # type: ignore[attr-defined]
            self._fh = None
