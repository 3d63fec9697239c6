"""What every stage needs: the spec, the study's paths, the base model and the suites.

Why a context and not a runner object: each stage is a plain function of (context, store),
so a stage can run alone (``traitwatch judge study.yaml``), from the Python API, or later on
another worker, and nothing but the context is shared between them. The expensive parts
(the base model, the suites) load on first use only: ``analyze`` never loads a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitwatch.config import StudySpec
from traitwatch.models import LoadedModel, load_model
from traitwatch.progress import console
from traitwatch.store import Store

from ._plan import Suites, generation_settings_hash, load_suites, settings_meta_key


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its files, all under ``out`` (the spec's ``output_dir``)."""

    out: Path

    @property
    def store(self) -> Path:
        return self.out / "study.sqlite"

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def runs(self) -> Path:
        return self.out / "runs"


@dataclass(frozen=True)
class StageResult:
    """What a stage did: its name, wall time and counts (printed by the CLI, kept in the report)."""

    name: str
    seconds: float
    counts: dict[str, Any] = field(default_factory=dict)


class StudyContext:
    """The validated spec, its paths, and lazily loaded shared resources."""

    def __init__(self, spec: StudySpec) -> None:
        assert spec.output_dir is not None, "the loader sets output_dir"
        self.spec = spec
        self.paths = StudyPaths(spec.output_dir)
        self._base: LoadedModel | None = None
        self._suites: Suites | None = None

    @property
    def base(self) -> LoadedModel:
        """The study's base model, loaded on first use."""
        if self._base is None:
            t = time.time()
            console.print(f"loading model: {self.spec.model.label()}")
            self._base = load_model(self.spec.model)
            console.print(f"model ready in {time.time() - t:.1f}s ({self._base.device})")
        return self._base

    @property
    def suites(self) -> Suites:
        if self._suites is None:
            self._suites = load_suites(self.spec)
        return self._suites

    def settings_hash(self, store: Store | None = None, *, model: LoadedModel | None = None) -> str:
        """The generation settings hash; read from the store when recorded (no model load).

        ``model``: a loaded copy of the study's base model to take the identity from (the live
        monitor's), so the study's own copy is not loaded just for its identity.
        """
        if store is not None:
            known = store.get_meta(settings_meta_key(self.spec))
            if known is not None:
                return known
        value = generation_settings_hash(self.spec, (model or self.base).identity)
        if store is not None and not store.readonly:
            store.set_meta(settings_meta_key(self.spec), value)
        return value

    def open_store(self, *, readonly: bool = False) -> Store:
        return Store(self.paths.store, readonly=readonly)

    def open_cache(self) -> Store | None:
        """The shared judgment cache (``judge_cache``), when the study names one."""
        return None if self.spec.judge_cache is None else Store(self.spec.judge_cache)
