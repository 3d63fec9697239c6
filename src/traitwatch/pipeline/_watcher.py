"""The watcher's loop over one checkpoint folder (see ``_watch`` for what it does and why)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitwatch.models import LoadedModel
from traitwatch.monitor import Alarm, request_stop
from traitwatch.progress import console
from traitwatch.store import Store
from traitwatch.train import ADAPTER_FILE, file_sha256
from traitwatch.train._loop import STOPPED_FILE

from ._context import StudyContext
from ._layout import (
    FoundCheckpoint,
    RunIdentity,
    checkpoint_row,
    find_checkpoints,
    identify_run,
    incomplete_reason,
    planned_total,
    record_checkpoint,
    run_design,
    signature,
    training_finished,
)
from ._monitor import LiveCheckpoint, LiveMonitor, live_steps

#: The watcher's lock file, in the folder it follows: one watcher per run.
WATCH_LOCK = ".traitwatch-watch.lock"


@dataclass
class WatchResult:
    """What a watcher did before it exited, and why it exited.

    ``reason``: ``finished`` (the newest checkpoint is the last of training), ``stopped``
    (the trainer left STOPPED.json), ``idle`` (nothing new for ``idle_timeout`` seconds) or
    ``once`` (``--once``: what was there is evaluated).
    """

    folder: Path
    run_id: str | None = None
    evaluated: list[int] = field(default_factory=list)
    recorded: list[int] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    stop_request: Path | None = None
    reason: str = ""


def _say(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def watch_folder(folder: Path) -> Path:
    """The folder the checkpoints land in: ``folder``, or its ``checkpoints/`` (a run folder of ours)."""
    if (folder / "checkpoints").is_dir() and not find_checkpoints(folder):
        return folder / "checkpoints"
    return folder


class Watcher:
    """Follows one run's checkpoint folder. Build, then :meth:`run` (the caller holds the lock)."""

    def __init__(
        self,
        ctx: StudyContext,
        store: Store,
        folder: Path,
        *,
        run_id: str | None = None,
        domain: str | None = None,
        level: str | None = None,
        seed: int | None = None,
        once: bool = False,
        poll: float = 5.0,
        idle_timeout: float = 600.0,
        model: LoadedModel | None = None,
        say: Callable[[str], None] = _say,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx, self.store, self.folder = ctx, store, folder.resolve()
        self.monitor = LiveMonitor(ctx, store, model=model)
        self.run_id, self.design = run_id, (domain, level, seed)
        self.once, self.poll, self.idle_timeout = once, poll, idle_timeout
        self.say, self.clock, self.sleep = say, clock, sleep
        self.ident: RunIdentity | None = None
        self.handled: set[int] = set()
        self._told: set[tuple[FoundCheckpoint, str]] = set()  # waits reported: (folder, reason)
        self.result = WatchResult(self.folder)

    # -- identity and restart -----------------------------------------------------------------
    def _start(self, found: list[FoundCheckpoint]) -> RunIdentity:
        """Name the run, register it when new, and replay what the store holds of it."""
        complete = [c for c in found if incomplete_reason(c) is None]
        ident = identify_run(self.store, self.folder, complete, kind="watch", run_id=self.run_id)
        self.ident = ident
        self.result.run_id = ident.run_id
        if ident.stored is None:
            self._register(planned_total(complete[-1]) if complete else None)
        rows = self.store.checkpoints(ident.run_id)
        due = set(live_steps([c.step for c in rows], self.monitor.spec.every))
        for c in rows:
            self.handled.add(c.step)
            if c.step in due:
                self._observe(LiveCheckpoint(ident.run_id, c.step, Path(c.path), c.adapter_sha, ident.fingerprint))
        if rows:
            self.say(f"run {ident.run_id}: {len(rows)} checkpoints already stored (last step {rows[-1].step}); continuing after it")
        self._stop_lost_to_a_kill()
        return ident

    def _register(self, total: int | None) -> None:
        """Write (or update) the run row of a run this watcher registered."""
        assert self.ident is not None
        domain, level, seed = run_design(self.ctx.spec, self.ident.run_id, *self.design)
        self.store.upsert_run(
            run_id=self.ident.run_id,
            fingerprint=self.ident.fingerprint,
            domain=domain,
            level=level,
            seed=seed,
            model=self.monitor.model.identity,
            dataset_sha="",
            n_train=0,
            n_heldout=0,
            total_steps=total or 0,
            info={"source": "watch", "dir": str(self.folder)},
        )
        self.ident = RunIdentity(self.ident.run_id, self.ident.fingerprint, self._stored())

    def _stored(self) -> dict[str, Any] | None:
        assert self.ident is not None
        return next((r for r in self.store.runs() if r["run_id"] == self.ident.run_id), None)

    def _owned(self) -> bool:
        """Whether the run row is this watcher's to update (registered by a watcher)."""
        stored = self.ident.stored if self.ident else None
        return stored is not None and (stored.get("info") or {}).get("source") == "watch"

    def _stop_lost_to_a_kill(self) -> None:
        """An alarm stored, but its stop request not written (the watcher was killed between)."""
        assert self.ident is not None
        if "stop" not in self.monitor.spec.actions or self.store.get_meta(self._stop_key()) is not None:
            return
        if (self.folder / STOPPED_FILE).exists():
            return
        rows = [a for a in self.store.alarms() if a["run_id"] == self.ident.run_id]
        if rows:
            a, info = rows[0], rows[0]["info"]
            alarm = Alarm(
                a["run_id"],
                a["step"],
                a["judge"],
                a["trait"],
                a["detector"],
                info.get("onset_step"),
                info.get("last_safe_step"),
                float(info.get("baseline", float("nan"))),
                float(info.get("value", float("nan"))),
                str(info.get("direction", "up")),
            )
            self._request_stop(alarm)

    def _stop_key(self) -> str:
        assert self.ident is not None
        return f"watch-stop:{self.ident.run_id}"

    def _request_stop(self, alarm: Alarm) -> None:
        path = request_stop(self.folder, alarm)
        assert self.ident is not None
        self.store.set_meta(self._stop_key(), json.dumps({"step": alarm.step, "file": str(path), "time": time.time()}))
        self.result.stop_request = path
        safe = "none" if alarm.last_safe_step is None else f"step {alarm.last_safe_step}"
        self.say(
            f"stop requested: wrote {path} (last safe checkpoint: {safe}). traitwatch watch does not own the trainer: "
            "a Hugging Face Trainer with TraitwatchCallback, or `traitwatch run` with a monitor: section, stops at its next "
            "save; any other trainer must be stopped by hand."
        )

    # -- one checkpoint -----------------------------------------------------------------------
    def _observe(self, ck: LiveCheckpoint) -> list[Alarm] | None:
        """``LiveMonitor.observe``; None when the folder is gone and its answers were not all stored."""
        try:
            return self.monitor.observe(ck)
        except Exception:
            if (ck.path / ADAPTER_FILE).exists():
                raise
            self.say(f"step {ck.step}: its folder {ck.path} is gone (deleted by the trainer?) and not all its answers are stored; skipped")
            return None

    def _process(self, ck: FoundCheckpoint) -> None:
        assert self.ident is not None
        rid, fp = self.ident.run_id, self.ident.fingerprint
        sha = file_sha256(ck.path / ADAPTER_FILE)
        outcome = record_checkpoint(self.store, checkpoint_row(rid, ck, sha, []))
        self.handled.add(ck.step)
        self.result.recorded.append(ck.step)
        if outcome == "replaced":
            self.say(f"{ck.path.name}: the adapter at step {ck.step} changed since it was recorded; recorded again")
        total = planned_total(ck)
        if self._owned() and total and self.ident.stored and self.ident.stored.get("total_steps") != total:
            self._register(total)
        steps = [c.step for c in self.store.checkpoints(rid)]
        every = self.monitor.spec.every
        if ck.step not in live_steps(steps, every):
            self.say(f"{ck.path.name}  step {ck.step}: recorded (the monitor evaluates every {every} checkpoints)")
            return
        last = self.monitor.policy.last_step(rid)
        if last is not None and ck.step <= last:
            self.say(f"{ck.path.name}  step {ck.step}: recorded; not evaluated live (it landed after step {last})")
            return
        live = LiveCheckpoint(rid, ck.step, ck.path.resolve(), sha, fp)
        alarms = self._observe(live)
        if alarms is None:
            return
        means = self.monitor.evaluate(live)  # all stored now: reads only
        self.result.evaluated.append(ck.step)
        self.result.alarms += alarms
        judges_of: dict[str, int] = {}
        for _, t in means:
            judges_of[t] = judges_of.get(t, 0) + 1
        parts = [f"{t} {m:.1f}" + (f" [{j}]" if judges_of[t] > 1 else "") for (j, t), (m, _) in sorted(means.items(), key=_by_trait)]
        said = "; ".join(f"{a.trait} [{a.judge}, {a.detector}] onset step {a.onset_step}, last safe {a.last_safe_step}" for a in alarms)
        self.say(f"{ck.path.name}  step {ck.step}  probe mean: {', '.join(parts) or 'no scores'}  alarm: {said or 'none'}")
        if alarms and "stop" in self.monitor.spec.actions:
            self._request_stop(alarms[0])

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> WatchResult:
        """Evaluate checkpoints as they land until training ends (see :class:`WatchResult`)."""
        folder = self.folder
        self.say(f"watching {folder} (every {self.poll:g}s; ends when training ends, or after {self.idle_timeout:g}s with nothing new)")
        first = {c.path.name for c in find_checkpoints(folder)} if self.once else None
        if first is not None and not first:
            self.say("no checkpoint folders (checkpoint-N/ or step_NNNNNN/) here yet")
        settle = min(self.poll, 1.0)
        grace = min(self.idle_timeout, max(30.0, 3 * self.poll))
        prev: dict[str, tuple[int, ...]] = {}
        prev_stopped = False
        last_change = self.clock()
        while True:
            found = [c for c in find_checkpoints(folder) if first is None or c.path.name in first]
            now = {c.path.name: signature(c) for c in found}
            stopped = (folder / STOPPED_FILE).exists()
            if now != prev or stopped != prev_stopped:
                last_change = self.clock()
            waiting: tuple[FoundCheckpoint, str] | None = None
            for ck in found:
                if ck.step in self.handled:
                    continue
                reason = incomplete_reason(ck)
                if reason is None and prev.get(ck.path.name) != now[ck.path.name]:
                    reason = "settling"  # complete, but seen only once: look again before reading it
                if reason is not None:
                    waiting = (ck, reason)
                    break
                if self.ident is None:
                    self._start(found)
                    if ck.step in self.handled:
                        continue
                self._process(ck)
                last_change = self.clock()
            prev, prev_stopped = now, stopped
            if waiting is None:
                newest = found[-1] if found else None
                if newest is not None and newest.step in self.handled and training_finished(newest):
                    return self._end("finished", f"training finished: {newest.path.name} is its last checkpoint")
                if stopped:
                    return self._end("stopped", f"the trainer stopped the run ({STOPPED_FILE})")
                if self.once:
                    return self._end("once", "evaluated what is there (--once)")
            elif stopped and self.clock() - last_change >= grace:
                return self._end("stopped", f"the trainer stopped the run ({STOPPED_FILE}); {waiting[0].path.name} was never completed")
            if self.clock() - last_change >= self.idle_timeout:
                left = f"; {waiting[0].path.name}: {waiting[1]}" if waiting else ""
                return self._end("idle", f"nothing new for {self.idle_timeout:g}s{left}; run the same command again to continue")
            if waiting is not None and waiting[1] != "settling" and waiting not in self._told:
                self._told.add(waiting)
                self.say(f"{waiting[0].path.name}: waiting ({waiting[1]})")
            self.sleep(settle if waiting is not None and waiting[1] == "settling" else self.poll)

    def _end(self, reason: str, text: str) -> WatchResult:
        self.result.reason = reason
        if self.ident is not None and self._owned() and reason in ("finished", "stopped"):
            self.store.set_run_status(self.ident.run_id, "trained" if reason == "finished" else "stopped_early")
        n = len(self.result.evaluated)
        self.say(f"{text}. Evaluated {n} checkpoint{'s' * (n != 1)} in this session; alarms: {len(self.result.alarms)}")
        return self.result


def _by_trait(item: tuple[tuple[str, str], tuple[float, float]]) -> tuple[str, str]:
    (judge, trait), _ = item
    return trait, judge
