"""From a study spec to concrete runs, suites and generation settings.

Why: every stage needs the same answers to "which runs exist, which questions are asked,
which traits are scored, what makes an answer key" and they must agree exactly, or a
stage would redo (or skip) the wrong work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from traitwatch.config import ModelSpec, StudySpec, TrainingSpec
from traitwatch.data import Suite, TraitDef, load_level, load_suite
from traitwatch.errors import ConfigError
from traitwatch.store import content_key
from traitwatch.train import RunPlan

#: Bump when the meaning of stored generations changes (prompt rendering, decoding rules).
GENERATION_VERSION = "gen-v1"


def run_id(domain: str, level: str, seed: int, *, model: str = "", lr: str = "") -> str:
    """``domain-level-sSEED``, prefixed ``MODEL-`` and suffixed ``-lrRATE`` only in a study
    with several models / learning rates, so a one-model, one-rate study keeps the ids (and the
    stored work keyed by them) it had before those axes existed."""
    core = f"{domain}-{level}-s{seed}"
    return (f"{model}-" if model else "") + core + (f"-lr{lr}" if lr else "")


def lr_label(lr: float) -> str:
    """A learning rate as it appears in run ids: ``1e-04``, ``0.0003`` (folder-safe: digits, e, -, .)."""
    return f"{lr:.3g}"


@dataclass(frozen=True)
class GridCell:
    """One (model, learning rate) of the grid: the name and spec of the model, the rate, and
    the parts they add to run ids (empty when the study has one model / one rate)."""

    model_name: str
    model: ModelSpec
    learning_rate: float
    model_part: str
    lr_part: str


def grid_cells(spec: StudySpec) -> list[GridCell]:
    """Every (model, learning rate) pair of the study, models outer, in spec order."""
    models = spec.base_models()
    rates = spec.run_learning_rates()
    return [
        GridCell(name, model, lr, name if len(models) > 1 else "", lr_label(lr) if len(rates) > 1 else "")
        for name, model in models
        for lr in rates
    ]


def planned_run_ids(spec: StudySpec) -> list[str]:
    """The ids of the study's planned runs, from the spec alone (no data, no model)."""
    return [
        run_id(ds.domain, level, seed, model=c.model_part, lr=c.lr_part)
        for c in grid_cells(spec)
        for ds in spec.datasets
        for level in spec.levels
        for seed in spec.seeds
    ]


def check_run_globs(spec: StudySpec, globs: Sequence[str] | None) -> tuple[str, ...] | None:
    """The ``--runs`` globs (fnmatch, on run ids), each checked to match a planned run.

    Why checked up front: a glob with a typo would otherwise select nothing, and a job of a
    Slurm array would finish at once, "successfully", having done none of its work.
    """
    if not globs:
        return None
    ids = planned_run_ids(spec)
    for g in globs:
        if not any(fnmatchcase(i, g) for i in ids):
            there = ", ".join(ids) if ids else "none (the spec has no datasets)"
            raise ConfigError(
                f"'{g}' matches no run of the study; its runs are: {there}", where="runs", fix="use a run id or a glob of them"
            )
    return tuple(globs)


def model_of_run(spec: StudySpec, rid: str) -> str:
    """The name of the base model a planned run fine-tunes (from the spec alone)."""
    cells = grid_cells(spec)
    for c in cells:
        ids = (run_id(ds.domain, lv, s, model=c.model_part, lr=c.lr_part) for ds in spec.datasets for lv in spec.levels for s in spec.seeds)
        if rid in ids:
            return c.model_name
    raise KeyError(rid)


def plan_runs(spec: StudySpec, model_identity: str | Mapping[str, str]) -> list[RunPlan]:
    """Every (model, domain, level, seed, learning rate) run with its data loaded and validated up front.

    ``model_identity``: the base model's identity, or one per model name (``spec.base_models()``)
    in a study with several; it is part of each run's fingerprint. Models missing from the
    mapping are left out (a Ray worker plans only its own model's runs).
    """
    assert spec.output_dir is not None
    plans = []
    for ds in spec.datasets:
        for level in spec.levels:
            data = load_level(ds, level, spec.output_dir)
            for cell in grid_cells(spec):
                if not isinstance(model_identity, str) and cell.model_name not in model_identity:
                    continue
                identity = model_identity if isinstance(model_identity, str) else model_identity[cell.model_name]
                training = spec.training
                if training.learning_rate != cell.learning_rate:
                    training = training.model_copy(update={"learning_rate": cell.learning_rate})
                for seed in spec.seeds:
                    rid = run_id(ds.domain, level, seed, model=cell.model_part, lr=cell.lr_part)
                    fingerprint = content_key("run-v1", identity, data.sha256, spec.lora.model_dump(), _weights_relevant(training), seed)
                    plans.append(
                        RunPlan(
                            run_id=rid,
                            domain=ds.domain,
                            level=level,
                            seed=seed,
                            examples=data.examples,
                            dataset_sha=data.sha256,
                            run_dir=spec.output_dir / "runs" / rid,
                            lora=spec.lora,
                            training=training,
                            fingerprint=fingerprint,
                            model_name=cell.model_name,
                            model_attributes=_attributes(spec, cell.model_name),
                        )
                    )
    order = {rid: i for i, rid in enumerate(planned_run_ids(spec))}
    return sorted(plans, key=lambda p: order[p.run_id])


def _attributes(spec: StudySpec, name: str) -> dict[str, float]:
    return next((dict(m.attributes) for m in spec.models if m.name == name), {})


#: Training settings that cannot change the trained weights (only what is measured).
_EVAL_ONLY = {"heldout_eval_max", "eval_batch_size"}

#: Training settings added after stores existed, left out of the fingerprint at their default
#: value, so runs trained before the setting existed keep their fingerprint (and stored work).
_LATER_DEFAULTS: dict[str, object] = {"optimizer": "adamw"}


def _weights_relevant(training: TrainingSpec) -> dict[str, object]:
    dumped = training.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in _EVAL_ONLY and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}


def settings_meta_key(spec: StudySpec) -> str:
    """Store meta key under which the generation settings hash of this spec is recorded."""
    payload = json.dumps([spec.model.model_dump(mode="json"), spec.generation.model_dump(mode="json")], sort_keys=True)
    return "settings:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suites:
    """The question suites, each with its own traits plus the study's extra traits."""

    suites: tuple[Suite, ...]

    def traits(self) -> dict[str, TraitDef]:
        out: dict[str, TraitDef] = {}
        for s in self.suites:
            out.update(s.traits)
        return out

    def probes(self, suite: Suite) -> tuple[str, ...]:
        """Texts whose answer-start probability the generator must measure for this suite."""
        return tuple(
            sorted(
                {t.checker.text for t in suite.traits.values() if t.checker and t.checker.kind == "marker_probability" and t.checker.text}
            )
        )


def load_suites(spec: StudySpec) -> Suites:
    extra: dict[str, TraitDef] = {}
    for ref in spec.extra_traits:
        extra.update(load_suite(ref, allow_no_questions=True).traits)
    suites = [load_suite(ref).with_traits(extra) for ref in spec.traits]
    names = [s.name for s in suites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two trait suites share the name {', '.join(dupes)}", where="traits", fix="rename one suite")
    return Suites(tuple(suites))


def generation_settings_hash(spec: StudySpec, model_identity: str) -> str:
    """Everything that shapes an answer besides the checkpoint and the question."""
    ev = spec.generation
    payload = {
        "version": GENERATION_VERSION,
        "model": model_identity,
        "temperature": ev.temperature,
        "top_p": ev.top_p,
        "max_new_tokens": ev.max_new_tokens,
        "system_prompt": ev.system_prompt,
        "seed": ev.seed,
        "backend": ev.backend,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def evaluated_steps(steps: list[int], every: int) -> list[int]:
    """Which saved checkpoints to evaluate: every ``every``-th, always the first and last."""
    steps = sorted(steps)
    chosen = {s for i, s in enumerate(steps) if i % every == 0}
    if steps:
        chosen.update({steps[0], steps[-1]})
    return sorted(chosen)
