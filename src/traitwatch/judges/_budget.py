"""A spending cap shared by every paid judge of a study.

Why: a study can send hundreds of thousands of judge requests; a wrong price or a loop must
not run up an unbounded bill. Each request reserves its estimated cost before it is sent and
settles the real cost after; when the next reservation would pass the cap, nothing more is
sent, the work done so far is stored, and the command stops with a clear message.
"""

from __future__ import annotations

import threading


class Budget:
    """Thread-safe spend tracker. ``max_usd=None`` means no cap."""

    def __init__(self, max_usd: float | None, spent_usd: float = 0.0) -> None:
        self.max_usd = max_usd
        self.spent_usd = spent_usd
        self._reserved = 0.0
        self._lock = threading.Lock()
        self.exhausted = False

    def reserve(self, estimate_usd: float) -> bool:
        """Reserve an estimated cost; False (and ``exhausted``) when it would pass the cap."""
        with self._lock:
            if self.max_usd is not None and self.spent_usd + self._reserved + estimate_usd > self.max_usd:
                self.exhausted = True
                return False
            self._reserved += estimate_usd
            return True

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        with self._lock:
            self._reserved -= estimate_usd
            self.spent_usd += actual_usd

    @property
    def remaining_usd(self) -> float | None:
        return None if self.max_usd is None else max(0.0, self.max_usd - self.spent_usd)
