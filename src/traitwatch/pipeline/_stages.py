"""The study's stages: train -> generate -> judge -> analyze -> report.

Why a runner object: the stages share one loaded base model, one store and one plan, and
each must also run alone (``traitwatch judge study.yaml``) reading only what earlier stages
stored. Every stage skips stored work, so a killed command rerun finishes the job without
repeating it, and writes in small transactions so a kill loses at most one batch.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitwatch.config import ModelSpec, StudySpec, dump_study
from traitwatch.errors import BudgetExceeded, JudgeError, StoreError
from traitwatch.generate import Answer, GenerationRequest, hf_generator
from traitwatch.judges import (
    Budget,
    CalibrationResult,
    Judge,
    JudgeRequest,
    Judgment,
    calibration_requests,
    checker,
    load_calibration,
    local_judge,
    openai_judge,
    score_calibration,
)
from traitwatch.models import LoadedModel, describe, load_model
from traitwatch.progress import console, stage_progress
from traitwatch.store import GenerationRow, JudgmentRow, Store, content_key
from traitwatch.train import TrainCallback, split_heldout, total_steps, train_run, verify

from ._plan import Suites, evaluated_steps, generation_settings_hash, load_suites, plan_runs, settings_meta_key, study_paths

#: Free disk space required before a study starts writing (checkpoints need more; see preflight).
MIN_FREE_BYTES = 200 * 2**20


@dataclass
class StageResult:
    name: str
    seconds: float
    counts: dict[str, Any] = field(default_factory=dict)


class StudyRunner:
    """Runs the stages of one study. Create with the validated spec; call stage methods."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.paths = study_paths(spec)
        self._base: LoadedModel | None = None
        self._suites: Suites | None = None

    # -- shared resources ----------------------------------------------------------------------
    @property
    def base(self) -> LoadedModel:
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

    def settings_hash(self, store: Store | None = None) -> str:
        """The generation settings hash; read from the store when recorded (no model load)."""
        if store is not None:
            known = store.get_meta(settings_meta_key(self.spec))
            if known is not None:
                return known
        value = generation_settings_hash(self.spec, self.base.identity)
        if store is not None and not store.readonly:
            store.set_meta(settings_meta_key(self.spec), value)
        return value

    def open_store(self, *, readonly: bool = False) -> Store:
        return Store(self.paths["store"], readonly=readonly)

    def open_cache(self) -> Store | None:
        """The shared judgment cache (judge_cache), when the study names one."""
        return None if self.spec.judge_cache is None else Store(self.spec.judge_cache)

    def preflight(self) -> None:
        """Fail before any work: unwritable output, no disk space, bad suites, missing judge keys."""
        out = self.paths["out"]
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"the output folder is not writable ({exc.strerror})", where=str(out), fix="choose a writable output_dir") from None
        free = shutil.disk_usage(out).free
        if free < MIN_FREE_BYTES:
            raise StoreError(
                f"only {free / 2**20:.0f} MiB free on the output disk (need at least {MIN_FREE_BYTES / 2**20:.0f} MiB)",
                where=str(out),
                fix="free space or choose another output_dir",
            )
        self.check_names()
        if self.spec.evaluation.backend == "vllm":
            from traitwatch.errors import ConfigError
            from traitwatch.generate import vllm_available

            reason = vllm_available()
            if reason is not None:
                raise ConfigError(
                    f"evaluation.backend is vllm but {reason}",
                    where="evaluation.backend",
                    fix="use backend: hf (the default; any device), or install vllm on a GPU machine",
                )
        for j in self.spec.judges:
            if j.kind == "openai":
                judge = self.make_judge(j.name, Budget(None))
                judge.preflight()  # type: ignore[attr-defined]

    def check_names(self) -> None:
        """Names used later (detectors, lead pairs, judges' traits) must exist now, not hours in."""
        from traitwatch.analysis import build_detectors
        from traitwatch.errors import ConfigError

        build_detectors(self.spec)
        known = sorted(self.suites.traits())
        fix = f"use trait names from the suites: {', '.join(known)}"
        for i, (a, b) in enumerate(self.spec.analysis.leads):
            for t in (a, b):
                if t not in known:
                    raise ConfigError(f"lead pair names unknown trait '{t}'", where=f"analysis.leads[{i}]", fix=fix)
        for j in self.spec.judges:
            for t in j.traits or []:
                if t not in known:
                    raise ConfigError(f"judge '{j.name}' names unknown trait '{t}'", where=f"judges[{j.name}].traits", fix=fix)

    # -- train -------------------------------------------------------------------------------
    def adapter_bytes(self) -> int:
        """Bytes of one saved LoRA adapter (fp32), from the model's layer shapes."""
        import torch

        targets = self.spec.lora.target_modules
        out_layer = self.base.model.get_output_embeddings()
        n = 0
        for name, mod in self.base.model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or mod is out_layer:
                continue
            if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
                n += self.spec.lora.r * (mod.in_features + mod.out_features)
        return 4 * n

    def check_disk(self, plans: Sequence[Any]) -> None:
        """Fail before training when the study's checkpoints and answers will not fit on disk."""
        per = self.adapter_bytes()
        ev = self.spec.evaluation
        need = MIN_FREE_BYTES
        for p in plans:
            existing = len(list((p.checkpoint_dir).glob("step_*"))) if p.checkpoint_dir.exists() else 0
            steps = total_steps(len(split_heldout(len(p.examples), p.training, p.seed)[0]), p.training)
            checkpoints = steps // p.training.save_every + 2
            questions = sum(len(s.questions) for s in self.suites.suites)
            need += max(0, checkpoints - existing) * per + 6 * per  # adapters + two resume states
            need += max(0, checkpoints - existing) * questions * ev.samples_per_question * (ev.max_new_tokens * 4 + 600)
        free = shutil.disk_usage(self.paths["out"]).free
        if free < need:
            raise StoreError(
                f"the study needs about {need / 2**30:.2f} GiB on the output disk and only {free / 2**30:.2f} GiB is free",
                where=str(self.paths["out"]),
                fix="free space, choose another output_dir, or raise training.save_every",
            )

    def train(self, store: Store, *, callbacks: Sequence[TrainCallback] = ()) -> StageResult:
        t0 = time.time()
        plans = plan_runs(self.spec, self.base.identity)
        self.check_disk(plans)
        store.set_meta("spec", dump_study(self.spec))
        store.set_meta("model", _json(describe(self.base)))
        steps_run = 0
        results = []
        expected = {p.run_id: total_steps(len(split_heldout(len(p.examples), p.training, p.seed)[0]), p.training) for p in plans}
        with stage_progress("train (steps)", sum(expected.values())) as bar:
            for plan in plans:
                bar.note(f"train {plan.run_id}")
                seen = {"done": 0}

                def on_step(done: int, total: int, seen: dict[str, int] = seen) -> None:
                    bar.advance(max(0, done - seen["done"]))
                    seen["done"] = done

                res = train_run(plan, self.base, store, callbacks=callbacks, on_step=on_step)
                bar.advance(max(0, expected[plan.run_id] - seen["done"]))
                results.append(res)
                steps_run += res.steps_run
                console.print(
                    f"  {plan.run_id}: {res.steps_run} steps in {res.seconds:.1f}s"
                    + (f" (resumed from step {res.resumed_from})" if res.resumed_from is not None and res.steps_run else "")
                    + (" (already trained)" if not res.steps_run else "")
                    + (" (stopped early)" if res.stopped_early else "")
                )
        ckpts = len(store.checkpoints())
        return StageResult("train", time.time() - t0, {"runs": len(plans), "steps_run": steps_run, "checkpoints": ckpts,
                                                       "checkpoint_wait_s": round(sum(r.save_wait_s for r in results), 2)})

    # -- generate ----------------------------------------------------------------------------
    def generation_requests(self, store: Store) -> list[tuple[GenerationRequest, dict[str, Any]]]:
        """Every (checkpoint, question, sample) answer the study needs, with its store fields."""
        settings = self.settings_hash(store)
        ev = self.spec.evaluation
        samples = ev.samples_per_question
        out = []
        planned = {p.run_id: p for p in plan_runs(self.spec, self.base.identity)}
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
            for step in evaluated_steps(list(cks), ev.every):
                ck = cks[step]
                for suite in self.suites.suites:
                    probes = self.suites.probes(suite)
                    for q in suite.questions:
                        for sample in range(samples):
                            key = content_key(settings, plan.fingerprint, step, ck.adapter_sha, suite.name, q.id, q.text, sample, probes)
                            out.append(
                                (
                                    GenerationRequest(key, ck.path, q.text, sample, probes),
                                    {"run_id": run["run_id"], "step": step, "suite": suite.name, "question_id": q.id},
                                )
                            )
        return out

    def generate(self, store: Store) -> StageResult:
        t0 = time.time()
        ev = self.spec.evaluation
        settings = self.settings_hash(store)
        wanted = self.generation_requests(store)
        have = store.existing("generations", "gen_key", [r.key for r, _ in wanted])
        todo = [(r, m) for r, m in wanted if r.key not in have]
        for path in sorted({r.adapter for r, _ in todo}):
            verify(Path(path))
        if ev.backend == "vllm":
            from traitwatch.generate import vllm_generator

            generator = vllm_generator(self.base, self.spec)
        else:
            generator = hf_generator(
                self.base,
                batch_size=ev.batch_size,
                adapters_per_batch=ev.adapters_per_batch,
                max_new_tokens=ev.max_new_tokens,
                temperature=ev.temperature,
                top_p=ev.top_p,
                system_prompt=ev.system_prompt,
                seed=ev.seed,
                lora=ev.lora,
            )
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

            generator.generate([r for r, _ in todo], on_batch)
        return StageResult("generate", time.time() - t0, {"answers": len(wanted), "generated": len(todo), "reused": len(wanted) - len(todo)})

    # -- judge -------------------------------------------------------------------------------
    def make_judge(self, name: str, budget: Budget) -> Judge:
        j = next(x for x in self.spec.judges if x.name == name)
        if j.kind == "check":
            return checker(j.name)
        if j.kind == "local":
            assert j.local is not None
            if j.local.source == "base":
                model = self.base
            else:
                model = load_model(ModelSpec.model_validate(j.local.model_dump()))
            return local_judge(
                model,
                name=j.name,
                batch_size=j.batch_size,
                min_mass=j.min_mass,
                min_prefix_prob=j.min_prefix_prob,
                response_prefix=j.response_prefix,
                weak=j.weak,
            )
        assert j.model is not None
        return openai_judge(
            j.model,
            name=j.name,
            base_url=j.base_url,
            api_key_env=j.api_key_env,
            api_key_file=j.api_key_file,
            scale=j.scale,
            max_concurrency=j.max_concurrency,
            timeout_s=j.timeout_s,
            max_retries=j.max_retries,
            price_input_per_mtok=j.price_input_per_mtok,
            price_output_per_mtok=j.price_output_per_mtok,
            min_mass=j.min_mass,
            budget=budget,
            weak=j.weak,
            digit_split=j.digit_split,
        )

    def judge_work(self, store: Store, judge: Judge) -> tuple[list[tuple[str, str, str, JudgeRequest]], int]:
        """(gen_key, trait, judgment_key, request) still to link for this judge, and how many are linked."""
        jspec = next(x for x in self.spec.judges if x.name == judge.name)
        suites = {s.name: s for s in self.suites.suites}
        linked = store.linked(judge.name)
        work = []
        done = 0
        gens = store.generations(settings_hash=self.settings_hash(store))
        steps_by_run: dict[str, list[int]] = {}
        for g in gens:
            steps_by_run.setdefault(g.run_id, []).append(g.step)
        judged = {r: set(evaluated_steps(sorted(set(s)), jspec.every)) for r, s in steps_by_run.items()}
        for g in gens:
            suite = suites.get(g.suite)
            if suite is None or g.step not in judged[g.run_id]:
                continue
            q = next((q for q in suite.questions if q.id == g.question_id), None)
            for trait, tdef in suite.traits.items():
                if not judge.can_score(tdef) or (jspec.traits is not None and trait not in jspec.traits):
                    continue
                req = JudgeRequest(trait, tdef, g.question, g.answer, {"expected": q.expected if q else None, "probes": g.probes})
                key = judgment_key(judge, req)
                if linked.get((g.gen_key, trait)) == key:
                    done += 1
                    continue
                work.append((g.gen_key, trait, key, req))
        return work, done

    def calibrate(
        self, store: Store, *, only: str | None = None, set_ref: str | None = None, budget: Budget | None = None
    ) -> list[CalibrationResult]:
        """Score the calibration set with every LLM judge (stored judgments are reused)."""
        items = load_calibration(set_ref or self.spec.calibration.set)
        traits = self.suites.traits()
        budget = budget or Budget(self.spec.budget.max_usd, sum(v["cost_usd"] for v in store.spend().values()))
        out: list[CalibrationResult] = []
        for jspec in self.spec.judges:
            if jspec.kind == "check" or (only is not None and jspec.name != only):
                continue
            judge = self.make_judge(jspec.name, budget)
            pairs = calibration_requests(items, traits, judge)
            keys = [judgment_key(judge, req) for _, req in pairs]
            stored = {j.judgment_key: j for j in store.judgments(keys)}
            todo = [i for i, k in enumerate(keys) if k not in stored]
            results: list[Judgment | None] = [None] * len(pairs)
            for i, k in enumerate(keys):
                if k in stored:
                    j = stored[k]
                    results[i] = Judgment(j.score, j.reason, j.method, j.raw)

            def on_result(k: int, res: Judgment) -> None:
                i = todo[k]
                results[i] = res
                if not res.failed:
                    store.add_judgments([_judgment_row(judge, keys[i], pairs[i][1], res)], [])

            if todo:
                with stage_progress(f"calibrate {jspec.name}", len(todo)):
                    judge.judge([pairs[i][1] for i in todo], on_result=on_result)
            out.extend(score_calibration(jspec.name, pairs, results, self.spec.calibration.cut))
        return out

    def gate(self, results: Sequence[CalibrationResult]) -> None:
        """Raise JudgeError when a judge is below calibration.min_accuracy on any trait."""
        need = self.spec.calibration.min_accuracy
        for r in results:
            if need > 0 and r.accuracy < need:
                shown = ", ".join(f"{i} (expected {w}, got {'none' if s is None else f'{s:.0f}'})" for i, w, s in r.failures[:4])
                raise JudgeError(
                    f"judge '{r.judge}' is {r.accuracy:.0%} accurate on the calibration set for trait {r.trait} "
                    f"(minimum {need:.0%}; {r.n - r.correct} of {r.n} wrong: {shown})",
                    where=f"judge {r.judge}",
                    fix="use a stronger judge or a clearer rubric, or lower calibration.min_accuracy",
                )

    def judge(self, store: Store, *, dry_run: bool = False, only: str | None = None) -> StageResult:
        t0 = time.time()
        spent = sum(v["cost_usd"] for v in store.spend().values())
        budget = Budget(self.spec.budget.max_usd, spent)
        counts: dict[str, Any] = {}
        if self.spec.calibration.min_accuracy > 0 and not dry_run:
            self.gate(self.calibrate(store, only=only, budget=budget))
        for jspec in self.spec.judges:
            if only is not None and jspec.name != only:
                continue
            judge = self.make_judge(jspec.name, budget)
            work, done = self.judge_work(store, judge)
            keys = sorted({k for _, _, k, _ in work})
            stored = store.existing("judgments", "judgment_key", keys)
            cache = self.open_cache()
            if cache is not None and not dry_run:
                stored |= store.copy_judgments([k for k in keys if k not in stored], cache)  # reused: no cost here
            fresh: dict[str, JudgeRequest] = {}
            for _, _, k, req in work:
                if k not in stored:
                    fresh.setdefault(k, req)
            if dry_run:
                cost = sum(judge.estimate_cost(r) for r in fresh.values()) if hasattr(judge, "estimate_cost") else 0.0  # type: ignore[attr-defined]
                counts[jspec.name] = {"requests": len(fresh), "links": len(work), "already": done, "estimated_usd": round(cost, 4)}
                continue
            # links to judgments that already exist (same answer judged before): no new request
            reuse = [(g, jspec.name, t, k) for g, t, k, _ in work if k in stored]
            if reuse:
                store.add_judgments([], reuse)
            links_by_key: dict[str, list[tuple[str, str, str, str]]] = {}
            for g, t, k, _ in work:
                if k not in stored:
                    links_by_key.setdefault(k, []).append((g, jspec.name, t, k))
            todo = list(fresh.items())
            chunk = {"check": 2000, "local": jspec.batch_size * 4, "openai": jspec.max_concurrency * 8}[jspec.kind]
            flush_at = 1 if jspec.kind == "openai" else 256  # paid answers are stored the moment they arrive
            made = 0
            failures: list[str] = []
            with stage_progress(f"judge {jspec.name}", len(todo)) as bar:
                for i in range(0, len(todo), chunk):
                    part = todo[i : i + chunk]
                    pending: list[tuple[JudgmentRow, list[tuple[str, str, str, str]]]] = []

                    def flush() -> None:
                        if pending:
                            store.add_judgments([r for r, _ in pending], [link for _, ls in pending for link in ls])
                            pending.clear()

                    def on_result(k: int, res: Judgment, part: list[tuple[str, JudgeRequest]] = part) -> None:
                        key, req = part[k]
                        if res.failed:  # not an answer: leave it unstored so the next run asks again
                            failures.append(res.reason or "failed")
                            return
                        pending.append((_judgment_row(judge, key, req, res), links_by_key[key]))
                        if len(pending) >= flush_at:
                            flush()

                    try:
                        results = judge.judge([r for _, r in part], on_result=on_result)
                    finally:
                        flush()
                    made += sum(1 for r in results if r is not None and not r.failed)
                    bar.advance(len(part))
                    if budget.exhausted:
                        raise BudgetExceeded(
                            f"spending cap of ${self.spec.budget.max_usd:.2f} reached after ${budget.spent_usd:.2f}; "
                            f"{made} new judgments stored",
                            where=f"judge {jspec.name}",
                            fix="raise budget.max_usd in the study and rerun; nothing already judged will be sent again",
                        )
            if cache is not None:
                cache.copy_judgments([k for k in keys if k not in stored], store)
                cache.close()
            counts[jspec.name] = {"new": made, "reused": len(reuse), "already": done, "links": len(work)}
            if failures:
                raise JudgeError(
                    f"{len(failures)} of {len(todo)} requests got no usable answer (first: {failures[0]}); {made} judgments stored",
                    where=f"judge {jspec.name}",
                    fix="check the endpoint and rerun traitwatch judge; only the failed requests are sent again",
                )
        return StageResult("judge", time.time() - t0, counts)

    # -- analyze and report ------------------------------------------------------------------
    def analyze(self, store: Store) -> tuple[Any, StageResult]:
        from traitwatch.analysis import analyze, write_csvs

        t0 = time.time()
        result = analyze(store, self.spec, self.settings_hash(store))
        files = write_csvs(result, self.paths["analysis"])
        return result, StageResult("analyze", time.time() - t0, {"curves": len(result.curves), "files": [str(f) for f in files]})

    def report(self, store: Store, analysis: Any, *, timings: Sequence[StageResult] = ()) -> tuple[Path, StageResult]:
        from traitwatch.report import write_report

        t0 = time.time()
        judges = {j.name: {"kind": j.kind, "weak": j.weak, "model": j.model or (j.local.label() if j.local else "")} for j in self.spec.judges}
        path = write_report(self.paths["report"], self.spec, analysis, store, judges=judges, timings=timings)
        return path, StageResult("report", time.time() - t0, {"path": str(path)})

    def run(self, stages: Sequence[str] = ("train", "generate", "judge", "analyze", "report"), *,
            callbacks: Sequence[TrainCallback] = (), on_stage: Callable[[StageResult], None] | None = None) -> tuple[list[StageResult], Path | None]:
        """Run the named stages in order; returns their results and the report path (if made)."""
        self.preflight()
        results: list[StageResult] = []
        report: Path | None = None
        with self.open_store() as store:
            analysis = None
            for stage in stages:
                if stage == "train":
                    res = self.train(store, callbacks=callbacks)
                elif stage == "generate":
                    res = self.generate(store)
                elif stage == "judge":
                    res = self.judge(store)
                elif stage == "analyze":
                    analysis, res = self.analyze(store)
                elif stage == "report":
                    if analysis is None:
                        analysis, _ = self.analyze(store)
                    report, res = self.report(store, analysis, timings=results)
                else:
                    raise ValueError(stage)
                results.append(res)
                if on_stage:
                    on_stage(res)
        return results, report


def judgment_key(judge: Judge, req: JudgeRequest) -> str:
    """The store key of a judgment: judge identity, trait, rubric or checker, exact input."""
    return content_key(judge.identity, req.trait, judge.scoring_hash(req.definition), judge.prompt_hash(req))


def _judgment_row(judge: Judge, key: str, req: JudgeRequest, res: Judgment) -> JudgmentRow:
    return JudgmentRow(
        judgment_key=key,
        judge=judge.name,
        judge_identity=judge.identity,
        trait=req.trait,
        scoring_hash=judge.scoring_hash(req.definition),
        prompt_hash=judge.prompt_hash(req),
        score=res.score,
        reason=res.reason,
        method=res.method,
        raw=res.raw,
        input_tokens=res.input_tokens,
        output_tokens=res.output_tokens,
        cost_usd=res.cost_usd,
    )


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)
