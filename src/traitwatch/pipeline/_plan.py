"""From a study spec to concrete runs, suites and generation settings.

Why: every stage needs the same answers to "which runs exist, which questions are asked,
which traits are scored, what makes an answer key" and they must agree exactly, or a
stage would redo (or skip) the wrong work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from traitwatch.config import StudySpec
from traitwatch.data import Suite, TraitDef, load_level, load_suite
from traitwatch.errors import ConfigError
from traitwatch.store import content_key
from traitwatch.train import RunPlan

#: Bump when the meaning of stored generations changes (prompt rendering, decoding rules).
GENERATION_VERSION = "gen-v1"


def run_id(domain: str, level: str, seed: int) -> str:
    return f"{domain}-{level}-s{seed}"


def planned_run_ids(spec: StudySpec) -> list[str]:
    """The ids of the study's planned runs, from the spec alone (no data, no model)."""
    return [run_id(ds.domain, level, seed) for ds in spec.datasets for level in spec.levels for seed in spec.seeds]


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


def plan_runs(spec: StudySpec, model_identity: str) -> list[RunPlan]:
    """Every (domain, level, seed) run with its data loaded and validated up front."""
    assert spec.output_dir is not None
    plans = []
    for ds in spec.datasets:
        for level in spec.levels:
            data = load_level(ds, level, spec.output_dir)
            for seed in spec.seeds:
                rid = run_id(ds.domain, level, seed)
                fingerprint = content_key("run-v1", model_identity, data.sha256, spec.lora.model_dump(), _weights_relevant(spec), seed)
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
                        training=spec.training,
                        fingerprint=fingerprint,
                    )
                )
    return plans


#: Training settings that cannot change the trained weights (only what is measured).
_EVAL_ONLY = {"heldout_eval_max", "eval_batch_size"}


def _weights_relevant(spec: StudySpec) -> dict[str, object]:
    return {k: v for k, v in spec.training.model_dump(mode="json").items() if k not in _EVAL_ONLY}


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
