"""What every stage needs: the spec, the study's paths, the base model and the suites.

Why a context and not a runner object: each stage is a plain function of (context, store),
so a stage can run alone (``traitwatch judge study.yaml``), from the Python API, or later on
another worker, and nothing but the context is shared between them. The expensive parts
(the base model, the suites) load on first use only: ``analyze`` never loads a model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from traitwatch.config import StudySpec
from traitwatch.models import LoadedModel, load_model
from traitwatch.progress import note
from traitwatch.store import Store

from ._plan import Suites, check_run_globs, generation_settings_hash, load_suites, settings_meta_key


def with_output_dir(spec: StudySpec, out: Path) -> StudySpec:
    """The spec writing to ``out`` instead of its ``output_dir`` (``--output-dir``: each job of a
    Slurm array its own study folder). Everything the study writes moves along: the store (a
    ``store`` elsewhere would be shared by the jobs) and the default alarm file."""
    assert spec.output_dir is not None, "the loader sets output_dir"
    out = out.expanduser().resolve()
    moved = spec.model_copy(deep=True)
    moved.output_dir, moved.store = out, None
    if moved.monitor is not None and moved.monitor.alarm_file == spec.output_dir / "alarms.jsonl":
        moved.monitor.alarm_file = out / "alarms.jsonl"
    return moved


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its files, all under ``out`` (the spec's ``output_dir``)."""

    out: Path
    store_file: Path | None = None  # the spec's ``store`` when it moves the store off output_dir

    @property
    def store(self) -> Path:
        return self.store_file or self.out / "study.sqlite"

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

    def __init__(self, spec: StudySpec, *, runs: Sequence[str] | None = None) -> None:
        """``runs``: fnmatch globs on run ids (``--runs``); train, generate and judge do only the
        work of matching runs (None or empty: every run). Each glob must match a planned run."""
        assert spec.output_dir is not None, "the loader sets output_dir"
        self.spec = spec
        self.runs = check_run_globs(spec, runs)
        self.paths = StudyPaths(spec.output_dir, spec.store)
        self._base: LoadedModel | None = None
        self._identity: str | None = None
        self._suites: Suites | None = None
        self._other: tuple[str, LoadedModel] | None = None  # the one other model held (several models)
        self._identities: dict[str, str] = {}

    @property
    def base(self) -> LoadedModel:
        """The study's base model, loaded on first use."""
        if self._base is None:
            t = time.time()
            note(f"loading model: {self.spec.model.label()}")
            self._base = load_model(self.spec.model)
            note(f"model ready in {time.time() - t:.1f}s ({self._base.device})")
        return self._base

    def base_for(self, name: str) -> LoadedModel:
        """The base model named ``name`` in ``spec.base_models()`` (the first: :attr:`base`).

        Why at most one other model is held: a study over several models may not fit them all
        in memory at once, so the stages go through the runs grouped by model and loading the
        next model releases the previous one.
        """
        models = dict(self.spec.base_models())
        first = next(iter(models))
        if name == first:
            return self.base
        if self._other is None or self._other[0] != name:
            self._other = None
            import gc

            gc.collect()
            t = time.time()
            note(f"loading model: {name} ({models[name].label()})")
            self._other = (name, load_model(models[name]))
            note(f"model ready in {time.time() - t:.1f}s ({self._other[1].device})")
        return self._other[1]

    def identity_of(self, name: str) -> str:
        """The identity of base model ``name`` (loads it once in a study with several models;
        a worker's report, :meth:`use_identity`, when given)."""
        if name == self.spec.base_models()[0][0]:
            return self.identity
        if name not in self._identities:
            self._identities[name] = self.base_for(name).identity
        return self._identities[name]

    def identities(self) -> dict[str, str]:
        """Every base model's identity by name (what :func:`plan_runs` takes)."""
        return {name: self.identity_of(name) for name, _ in self.spec.base_models()}

    @property
    def identity(self) -> str:
        """The base model's identity (part of every run fingerprint and answer key): the loaded
        model's, or the one a worker reported (:meth:`use_identity`), so a driver that only
        coordinates need not load the model."""
        if self._identity is None:
            self._identity = self.base.identity
        return self._identity

    def use_identity(self, identity: str, name: str | None = None) -> None:
        """Take a base model's identity from where the model runs (a Ray worker); ``name``: which
        of several models (default the study's model)."""
        if name is None or name == self.spec.base_models()[0][0]:
            self._identity = identity
        else:
            self._identities[name] = identity

    def wants(self, run_id: str) -> bool:
        """Whether this context's work includes run ``run_id`` (see ``runs``)."""
        return self.runs is None or any(fnmatchcase(run_id, g) for g in self.runs)

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
        value = generation_settings_hash(self.spec, model.identity if model is not None else self.identity)
        if store is not None and not store.readonly:
            store.set_meta(settings_meta_key(self.spec), value)
        return value

    def open_store(self, *, readonly: bool = False) -> Store:
        return Store(self.paths.store, readonly=readonly)

    def open_cache(self) -> Store | None:
        """The shared judgment cache (``judge_cache``), when the study names one."""
        return None if self.spec.judge_cache is None else Store(self.spec.judge_cache)
