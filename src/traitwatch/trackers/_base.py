"""What every tracker gets and does: one :class:`TrackedRun` per traitwatch run, logged whole.

Why this shape: the numbers come from the store and the analysis, which already exist when
the track stage runs, so a tracker receives finished series and summaries and only has to
write them in its own format. Each backend decides how a rerun stays free of duplicates
(MLflow: rewrite a run only when its content changed; TensorBoard: rewrite the event files;
W&B: replace an unsynced offline copy, skip steps an online run has).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from traitwatch.errors import ConfigError

#: The Python package each tracker kind needs (its import name is the same).
PACKAGES: dict[str, str] = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
INSTALL = "pip install 'traitwatch[trackers]'"


@dataclass
class TrackedRun:
    """What is logged for one traitwatch run (or the study-level summary run).

    ``series``: step (the checkpoint's global training step) -> {metric name: value};
    ``summary``: metric name -> value, logged once at ``final_step`` (or as the run summary);
    ``params``: the spec's settings and the run's identity, flattened to ``a.b.c`` keys;
    ``tags``: mutable labels (status, settings hash) that do not count as content.
    """

    name: str
    group: str
    params: dict[str, Any]
    series: dict[int, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    final_step: int = 0

    def points(self) -> int:
        """How many values the run holds (series points plus summary values)."""
        return sum(len(v) for v in self.series.values()) + len(self.summary)

    def content_hash(self) -> str:
        """A hash of everything logged except tags: equal hashes mean a rerun has nothing new."""
        payload = [
            self.name,
            self.group,
            self.params,
            sorted((s, sorted(m.items())) for s, m in self.series.items()),
            sorted(self.summary.items()),
        ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Tracker(Protocol):
    """A backend: writes runs, says where they are and how to look at them."""

    kind: str

    def log(self, runs: list[TrackedRun]) -> dict[str, int]:
        """Write every run; returns counts for the stage's line (runs written, runs unchanged, values logged)."""
        ...

    def where(self) -> str:
        """Where the runs went, as a command that opens them (``mlflow ui --backend-store-uri ...``)."""
        ...


def require(kind: str) -> ModuleType:
    """Import the tracker's package, or fail with one line that says how to install it."""
    name = PACKAGES[kind]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise missing(kind) from None


def missing(kind: str) -> ConfigError:
    return ConfigError(f"the {kind} tracker needs the package '{PACKAGES[kind]}'", where=f"trackers ({kind})", fix=INSTALL)


def check_installed(kinds: list[str]) -> None:
    """Fail before any work when a configured tracker's package is not installed (no import:
    mlflow takes seconds to import; finding it is enough)."""
    for kind in kinds:
        if importlib.util.find_spec(PACKAGES[kind]) is None:
            raise missing(kind)
