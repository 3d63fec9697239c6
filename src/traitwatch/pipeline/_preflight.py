"""Checks before any work: a study that cannot finish should fail in seconds, not hours in.

Why here and not in each stage: the failures users hit late (a full disk after a night of
training, a missing API key at the judge stage, a typo in a lead pair) are all knowable
before the first step, from the spec and the machine alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from traitwatch.errors import ConfigError, StoreError
from traitwatch.judges import Budget, build_judge
from traitwatch.train import RunPlan, split_heldout, total_steps

from ._context import StudyContext

#: Free disk space required before a study starts writing (checkpoints need more; see check_disk).
MIN_FREE_BYTES = 200 * 2**20


def preflight(ctx: StudyContext) -> None:
    """Fail before any work: unwritable output, no disk space, bad names, missing judge keys."""
    out = ctx.paths.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StoreError(
            f"the output folder is not writable ({exc.strerror})", where=str(out), fix="choose a writable output_dir"
        ) from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise StoreError(
            f"only {free / 2**20:.0f} MiB free on the output disk (need at least {MIN_FREE_BYTES / 2**20:.0f} MiB)",
            where=str(out),
            fix="free space or choose another output_dir",
        )
    check_names(ctx)
    if ctx.spec.generation.backend == "vllm":
        from traitwatch.generate import vllm_available

        reason = vllm_available()
        if reason is not None:
            raise ConfigError(
                f"generation.backend is vllm but {reason}",
                where="generation.backend",
                fix="use backend: hf (the default), or name a Python that has vLLM in TRAITWATCH_VLLM_PYTHON (docs/install.md)",
            )
    for j in ctx.spec.judges:
        build_judge(j, base=lambda: ctx.base, budget=Budget(None)).preflight()
    if ctx.spec.trackers:  # a missing tracker package fails now, not after training
        from traitwatch.trackers import check_trackers

        check_trackers(ctx.spec)


def check_names(ctx: StudyContext) -> None:
    """Names used later (detectors, lead pairs, judges' traits) must exist now, not hours in."""
    from traitwatch.analysis import build_detectors

    build_detectors(ctx.spec)
    known = sorted(ctx.suites.traits())
    fix = f"use trait names from the suites: {', '.join(known)}"
    for i, (a, b) in enumerate(ctx.spec.analysis.leads):
        for t in (a, b):
            if t not in known:
                raise ConfigError(f"lead pair names unknown trait '{t}'", where=f"analysis.leads[{i}]", fix=fix)
    for j in ctx.spec.judges:
        for t in j.traits or []:
            if t not in known:
                raise ConfigError(f"judge '{j.name}' names unknown trait '{t}'", where=f"judges[{j.name}].traits", fix=fix)


def adapter_bytes(ctx: StudyContext) -> int:
    """Bytes of one saved LoRA adapter (fp32), from the model's layer shapes."""
    import torch

    targets = ctx.spec.lora.target_modules
    out_layer = ctx.base.model.get_output_embeddings()
    n = 0
    for name, mod in ctx.base.model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is out_layer:
            continue
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            n += ctx.spec.lora.r * (mod.in_features + mod.out_features)
    return 4 * n


def check_disk(ctx: StudyContext, plans: Sequence[RunPlan]) -> None:
    """Fail before training when the study's checkpoints and answers will not fit on disk."""
    per = adapter_bytes(ctx)
    gen = ctx.spec.generation
    questions = sum(len(s.questions) for s in ctx.suites.suites)
    need = MIN_FREE_BYTES
    for p in plans:
        existing = len(list(p.checkpoint_dir.glob("step_*"))) if p.checkpoint_dir.exists() else 0
        steps = total_steps(len(split_heldout(len(p.examples), p.training, p.seed)[0]), p.training)
        checkpoints = steps // p.training.save_every + 2
        need += max(0, checkpoints - existing) * per + 6 * per  # adapters + two resume states
        need += max(0, checkpoints - existing) * questions * gen.samples_per_question * (gen.max_new_tokens * 4 + 600)
    free = shutil.disk_usage(ctx.paths.out).free
    if free < need:
        raise StoreError(
            f"the study needs about {need / 2**30:.2f} GiB on the output disk and only {free / 2**30:.2f} GiB is free",
            where=str(ctx.paths.out),
            fix="free space, choose another output_dir, or raise training.save_every",
        )
