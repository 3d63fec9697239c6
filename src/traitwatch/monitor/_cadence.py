"""Which checkpoints a live monitor evaluates: every ``every``-th of a run (its first always),
and with ``max_overhead`` only while live evaluation stays within that share of training time.

Why a time budget and not only a fixed cadence: what a probe evaluation costs next to a
training step depends on the model, the device and the answers' length (on the demo's 2-core
CPU, answering 8 probes takes about half a training step; on a GPU at paper scale far less),
so the user states what they can spare and the cadence follows. A due checkpoint is skipped
when evaluating it, at the mean cost of the evaluations so far, would take the time spent on
live evaluation over ``max_overhead`` x the training time since the first checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Cadence:
    """Decides, checkpoint by checkpoint, whether to evaluate; the caller reports its cost."""

    def __init__(self, every: int, max_overhead: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.every = every
        self.max_overhead = max_overhead
        self.clock = clock
        self.seconds = 0.0  # spent on live evaluation (and the waits it caused)
        self.evaluated = 0
        self.skipped = 0  # due checkpoints skipped to stay within max_overhead
        self._seen: dict[str, list[int]] = {}
        self._start: float | None = None  # when the first checkpoint was offered

    def due(self, run_id: str, step: int, earlier: Callable[[], list[int]]) -> bool:
        """Whether to evaluate this newly saved checkpoint. Call once per checkpoint, in training
        order; a step offered twice is not due again. ``earlier``: the run's checkpoint steps
        stored before this one (asked once per run: a resumed run counts them)."""
        now = self.clock()
        if self._start is None:
            self._start = now
        seen = self._seen.get(run_id)
        if seen is None:
            seen = self._seen[run_id] = sorted(s for s in earlier() if s < step)
        if step in seen:
            return False
        index = len(seen)
        seen.append(step)
        if index % self.every:
            return False
        if index == 0 or self.max_overhead is None or self.evaluated == 0:
            return True
        training = (now - self._start) - self.seconds
        if self.seconds * (1 + 1 / self.evaluated) <= self.max_overhead * training:
            return True
        self.skipped += 1
        return False

    def charge(self, seconds: float, *, evaluation: bool = False) -> None:
        """Count time the monitor took from training (``evaluation``: one more evaluation)."""
        self.seconds += seconds
        self.evaluated += int(evaluation)
