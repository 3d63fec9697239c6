"""The generate stage: answers to every trait question at every evaluated checkpoint.

Why keys first: every (checkpoint, question, sample) answer has a content key that hashes
all its inputs, so the stage computes the keys the study needs, asks the store which exist,
and generates only the rest. A generator hands answers back in batches; each batch is one
transaction, so a kill loses at most the batch in flight.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from traitwatch.errors import StoreError
from traitwatch.generate import Answer, GenerationRequest, Generator, hf_generator
from traitwatch.progress import stage_progress
from traitwatch.store import GenerationRow, Store, content_key
from traitwatch.train import verify

from ._context import StageResult, StudyContext
from ._plan import evaluated_steps, plan_runs

#: Where an answer goes in the store besides its key: run, step, suite, question id.
Placement = dict[str, Any]


def generation_requests(ctx: StudyContext, store: Store) -> list[tuple[GenerationRequest, Placement]]:
    """Every (checkpoint, question, sample) answer the study needs, with its store fields."""
    settings = ctx.settings_hash(store)
    gen = ctx.spec.generation
    out = []
    planned = {p.run_id: p for p in plan_runs(ctx.spec, ctx.base.identity)}
    for run in store.runs():
        plan = planned.get(run["run_id"])
        if plan is None:
            continue
        if run["fingerprint"] != plan.fingerprint:
            raise StoreError(
                f"run '{run['run_id']}' was trained with other settings than the study now has (model, data, LoRA or training)",
                where=str(store.path),
                fix="restore the study's settings, or use a new output_dir for the changed study",
            )
        cks = {c.step: c for c in store.checkpoints(run["run_id"])}
        for step in evaluated_steps(list(cks), gen.every):
            ck = cks[step]
            for suite in ctx.suites.suites:
                probes = ctx.suites.probes(suite)
                for q in suite.questions:
                    for sample in range(gen.samples_per_question):
                        key = content_key(settings, plan.fingerprint, step, ck.adapter_sha, suite.name, q.id, q.text, sample, probes)
                        where = {"run_id": run["run_id"], "step": step, "suite": suite.name, "question_id": q.id}
                        out.append((GenerationRequest(key, ck.path, q.text, sample, probes), where))
    return out


def make_generator(ctx: StudyContext) -> Generator:
    """The generation backend the spec names (``hf`` by default, ``vllm`` on a GPU)."""
    gen = ctx.spec.generation
    if gen.backend == "vllm":
        from traitwatch.generate import vllm_generator

        return vllm_generator(ctx.base, ctx.spec)
    return hf_generator(
        ctx.base,
        batch_size=gen.batch_size,
        adapters_per_batch=gen.adapters_per_batch,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        system_prompt=gen.system_prompt,
        seed=gen.seed,
        lora=gen.lora,
    )


def generate(ctx: StudyContext, store: Store) -> StageResult:
    """Generate every answer the study needs that the store does not hold yet."""
    t0 = time.time()
    settings = ctx.settings_hash(store)
    wanted = generation_requests(ctx, store)
    have = store.existing("generations", "gen_key", [r.key for r, _ in wanted])
    todo = [(r, m) for r, m in wanted if r.key not in have]
    for path in sorted({r.adapter for r, _ in todo}):
        verify(Path(path))
    index = {r.key: (r, m) for r, m in todo}
    with stage_progress("generate", len(todo)) as bar:

        def on_batch(answers: list[Answer]) -> None:
            rows = []
            for a in answers:
                req, m = index[a.key]
                rows.append(
                    GenerationRow(
                        gen_key=a.key,
                        run_id=m["run_id"],
                        step=m["step"],
                        suite=m["suite"],
                        question_id=m["question_id"],
                        sample=req.sample,
                        question=req.prompt,
                        answer=a.text,
                        n_tokens=a.n_tokens,
                        finish=a.finish,
                        probes=a.probes,
                        settings_hash=settings,
                    )
                )
            store.add_generations(rows)
            bar.advance(len(answers))

        if todo:
            make_generator(ctx).generate([r for r, _ in todo], on_batch)
    return StageResult("generate", time.time() - t0, {"answers": len(wanted), "generated": len(todo), "reused": len(wanted) - len(todo)})
