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

from traitwatch.errors import ConfigError, ModelError, StoreError
from traitwatch.generate import Answer, GenerationRequest, Generator, hf_generator
from traitwatch.models import LoadedModel
from traitwatch.progress import console, stage_progress
from traitwatch.store import GenerationRow, Store, content_key
from traitwatch.train import ADAPTER_FILE, file_sha256, verify

from ._context import StageResult, StudyContext
from ._layout import EXTERNAL_SOURCES
from ._plan import evaluated_steps, plan_runs

#: Where an answer goes in the store besides its key: run, step, suite, question id.
Placement = dict[str, Any]


def generation_requests(
    ctx: StudyContext, store: Store, gone: list[str] | None = None, *, only: set[str] | None = None
) -> list[tuple[GenerationRequest, Placement]]:
    """Every (checkpoint, question, sample) answer the study needs, with its store fields.

    The study's planned runs, and the runs trained elsewhere that the store holds (``info.source``
    import, hf-trainer or watch: ``traitwatch import``, ``TraitwatchCallback``, ``traitwatch
    watch``), each with its stored fingerprint. Other stored runs (a plan changed since) are left out,
    and so are checkpoints of runs trained elsewhere whose adapter file is gone (a trainer's
    ``save_total_limit`` deletes old ones); their paths are appended to ``gone``. ``only``: just
    these run ids (the Ray driver asks for one run's answers as its training returns). With ``--runs``
    (``ctx.runs``), only the runs it matches.
    """
    settings = ctx.settings_hash(store)
    gen = ctx.spec.generation
    out = []
    plans = plan_runs(ctx.spec, ctx.identities())
    planned = {p.run_id: p.fingerprint for p in plans}
    model_of = {p.run_id: p.model_name for p in plans}  # runs trained elsewhere: the study's model
    first_model = ctx.spec.base_models()[0][0]
    for run in store.runs():
        if not ctx.wants(run["run_id"]) or (only is not None and run["run_id"] not in only):
            continue
        fingerprint = planned.get(run["run_id"])
        external = fingerprint is None
        if fingerprint is None:
            if (run["info"] or {}).get("source") not in EXTERNAL_SOURCES:
                continue
            fingerprint = run["fingerprint"]
        if run["fingerprint"] != fingerprint:
            raise StoreError(
                f"run '{run['run_id']}' was trained with other settings than the study now has (model, data, LoRA or training)",
                where=str(store.path),
                fix="restore the study's settings, or use a new output_dir for the changed study",
            )
        cks = {c.step: c for c in store.checkpoints(run["run_id"])}
        if external:
            missing = [c for c in cks.values() if not (Path(c.path) / ADAPTER_FILE).exists()]
            if gone is not None:
                gone += [c.path for c in missing]
            cks = {s: c for s, c in cks.items() if c not in missing}
        for step in evaluated_steps(list(cks), gen.every):
            ck = cks[step]
            for suite in ctx.suites.suites:
                probes = ctx.suites.probes(suite)
                for q in suite.questions:
                    for sample in range(gen.samples_per_question):
                        key = content_key(settings, fingerprint, step, ck.adapter_sha, suite.name, q.id, q.text, sample, probes)
                        where = {"run_id": run["run_id"], "step": step, "suite": suite.name, "question_id": q.id}
                        where["adapter_sha"] = ck.adapter_sha
                        where["model"] = model_of.get(run["run_id"], first_model)
                        out.append((GenerationRequest(key, ck.path, q.text, sample, probes), where))
    return out


def answer_row(req: GenerationRequest, where: Placement, answer: Answer, settings: str) -> GenerationRow:
    """The store row of a generated answer (the same for a local run and a Ray worker's)."""
    return GenerationRow(
        gen_key=answer.key,
        run_id=where["run_id"],
        step=where["step"],
        suite=where["suite"],
        question_id=where["question_id"],
        sample=req.sample,
        question=req.prompt,
        answer=answer.text,
        n_tokens=answer.n_tokens,
        finish=answer.finish,
        probes=answer.probes,
        settings_hash=settings,
    )


def check_adapter(folder: Path, sha: str) -> None:
    """Before answering with an adapter: ours is checked against its meta.json (size); one trained
    elsewhere (no meta.json) against the sha256 stored when it was registered, since the answers'
    keys name that sha."""
    if (folder / "meta.json").exists():
        verify(folder)
        return
    try:
        same = file_sha256(folder / ADAPTER_FILE) == sha
    except OSError:
        same = False
    if not same:
        raise ModelError(
            "checkpoint adapter is missing or changed since it was registered (sha256 differs)",
            where=str(folder / ADAPTER_FILE),
            fix="run `traitwatch import` on its folder again to register the adapters there now",
        )


def make_generator(ctx: StudyContext, model: str | None = None) -> Generator:
    """The generation backend the spec names (``hf`` by default, ``vllm`` on a GPU), on base
    model ``model`` (a name of ``spec.base_models()``; default the study's model)."""
    base = ctx.base if model is None else ctx.base_for(model)
    if ctx.spec.generation.backend == "vllm":
        from traitwatch.generate import vllm_generator

        if model is not None and model != ctx.spec.base_models()[0][0]:
            raise ConfigError(
                "the vllm backend serves the study's first model only",
                where="generation.backend",
                fix="use backend: hf for a study with several models",
            )
        return vllm_generator(base, ctx.spec)
    return make_hf_generator(ctx, base)


def make_hf_generator(ctx: StudyContext, model: LoadedModel, *, adapters_per_batch: int | None = None) -> Generator:
    """The ``hf`` generator with the spec's generation settings on ``model`` (the study's base
    model, or the live monitor's own copy, which attaches one checkpoint at a time)."""
    gen = ctx.spec.generation
    return hf_generator(
        model,
        batch_size=gen.batch_size,
        adapters_per_batch=adapters_per_batch or gen.adapters_per_batch,
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
    gone: list[str] = []
    wanted = generation_requests(ctx, store, gone)
    if gone:
        console.print(f"note: {len(gone)} checkpoint folders of runs trained elsewhere are gone (e.g. {gone[0]}); left out", markup=False)
    have = store.existing("generations", "gen_key", [r.key for r, _ in wanted])
    todo = [(r, m) for r, m in wanted if r.key not in have]
    for path, sha in sorted({(r.adapter, m["adapter_sha"]) for r, m in todo}):
        check_adapter(Path(path), sha)
    index = {r.key: (r, m) for r, m in todo}
    with stage_progress("generate", len(todo)) as bar:

        def on_batch(answers: list[Answer]) -> None:
            rows = [answer_row(*index[a.key], a, settings) for a in answers]
            store.add_generations(rows)
            bar.advance(len(answers))

        # each run's checkpoints on its own base model: the adapters are batched per model
        for model in dict.fromkeys(m["model"] for _, m in todo):
            make_generator(ctx, model).generate([r for r, m in todo if m["model"] == model], on_batch)
    return StageResult("generate", time.time() - t0, {"answers": len(wanted), "generated": len(todo), "reused": len(wanted) - len(todo)})
