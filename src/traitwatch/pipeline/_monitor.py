"""Live monitoring: evaluate each new checkpoint on the probe set, feed the alarm policy, act.

Why in the pipeline: a live evaluation is the generate and judge stages restricted to a few
questions of one checkpoint, and it must store its answers and judgments exactly as those
stages do (same content keys), so the full evaluation after training reuses every probe
answer and no judge call is paid twice. The policy (online detectors, rules) and the actions
live in ``traitwatch.monitor``; this module feeds them and records alarms in the store.

Cadence (:meth:`LiveMonitor.due`): ``traitwatch.monitor.Cadence``. Direction: each rule's from ``analysis.directions``.

Restart safety: ``observe`` on a checkpoint whose answers and judgments are stored costs a few
reads, and the policy ignores checkpoints it has seen, so a restarted monitor replays the
run's stored checkpoints (``catch_up``) and continues; an alarm already stored is not acted on
again (the alarms table is keyed by run, judge, trait and detector).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.config import JudgeSpec, MonitorSpec
from traitwatch.data import Suite
from traitwatch.errors import ConfigError
from traitwatch.generate import Answer, GenerationRequest, Generator
from traitwatch.judges import Judge, JudgeRequest, build_judge, judgment_key
from traitwatch.models import LoadedModel
from traitwatch.monitor import Alarm, AlarmPolicy, Cadence, CheckpointMeans, Rule, act
from traitwatch.store import GenerationRow, Store, content_key
from traitwatch.train import CheckpointEvent

from ._context import StudyContext
from ._generate import make_hf_generator
from ._judge import Link, _send, study_budget, study_directions


@dataclass(frozen=True)
class LiveCheckpoint:
    """A saved adapter to evaluate live: where it is and what identifies its answers."""

    run_id: str
    step: int
    path: Path
    adapter_sha: str
    fingerprint: str


def live_steps(steps: Sequence[int], every: int) -> list[int]:
    """Which checkpoints a live monitor evaluates: every ``every``-th seen, the first always."""
    return [s for i, s in enumerate(sorted(steps)) if i % every == 0]


class LiveMonitor:
    """Evaluates checkpoints of one study live. Build once; call :meth:`observe` per checkpoint."""

    def __init__(self, ctx: StudyContext, store: Store, *, model: LoadedModel | None = None) -> None:
        if ctx.spec.monitor is None:
            raise ConfigError("the study has no monitor section", where="monitor", fix="add monitor: {alarms: [TRAIT]} (docs/monitor.md)")
        self.ctx = ctx
        self.store = store
        self.spec: MonitorSpec = ctx.spec.monitor
        self._model = model
        self._generator: Generator | None = None
        traits = ctx.suites.traits()
        for rule in self.spec.alarms:
            if rule.trait not in traits:
                raise ConfigError(
                    f"monitor alarm names unknown trait '{rule.trait}'",
                    where="monitor.alarms",
                    fix=f"use trait names from the suites: {', '.join(sorted(traits))}",
                )
        self.watched = sorted({r.trait for r in self.spec.alarms})
        self.suites = [s for s in ctx.suites.suites if any(t in s.traits for t in self.watched)]
        budget = study_budget(ctx, store)
        self.judges: list[tuple[JudgeSpec, Judge]] = [
            (j, build_judge(j, base=lambda: self.model, budget=budget, directions=study_directions(ctx, j, budget)))
            for j in self._live_judge_specs()
        ]
        self.policy = AlarmPolicy([self._resolve(r) for r in self.spec.alarms])
        self.cadence = Cadence(self.spec.every, self.spec.max_overhead)

    # -- setup -------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel:
        """The model that answers the probes (and serves local judges with source: base)."""
        if self._model is None:
            self._model = self.ctx.base
        return self._model

    def _live_judge_specs(self) -> list[JudgeSpec]:
        names = self.spec.judges or sorted({r.judge for r in self.spec.alarms if r.judge}) or [j.name for j in self.ctx.spec.judges]
        return [j for j in self.ctx.spec.judges if j.name in names]

    def _resolve(self, rule: Any) -> Rule:
        """The rule with its judge named: the first live judge that scores its trait."""
        tdef = self.ctx.suites.traits()[rule.trait]
        names = [j.name for j, judge in self.judges if judge.can_score(tdef) and (j.traits is None or rule.trait in j.traits)]
        judge = rule.judge or (names[0] if names else None)
        if judge is None or judge not in names:
            raise ConfigError(
                f"no live judge scores trait '{rule.trait}'" + (f" (judge '{rule.judge}' cannot)" if rule.judge else ""),
                where="monitor.alarms",
                fix="name a judge that scores it in monitor.judges, or alarm on a trait your judges score",
            )
        direction = self.ctx.spec.analysis.direction(rule.trait)
        return Rule(rule.trait, judge, rule.detector.name, dict(rule.detector.params), rule.min_rise, rule.consecutive, direction)

    def questions(self, suite: Suite) -> list[Any]:
        """The probe questions of a suite: the listed ids, else the first N."""
        probes = self.spec.probes
        if probes.question_ids is not None:
            return [q for q in suite.questions if q.id in set(probes.question_ids)]
        return list(suite.questions[: probes.questions] if probes.questions else suite.questions)

    def settings(self) -> str:
        """The generation settings hash of the study (the full stage's, so keys agree)."""
        return self.ctx.settings_hash(self.store, model=self.model)

    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = make_hf_generator(self.ctx, self.model, adapters_per_batch=1)
        return self._generator

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, ck: LiveCheckpoint) -> CheckpointMeans:
        """Probe answers and their scores for one checkpoint (stored; only missing work is done)."""
        settings = self.settings()
        wanted: list[tuple[GenerationRequest, GenerationRow]] = []
        for suite in self.suites:
            probes = self.ctx.suites.probes(suite)
            for q in self.questions(suite):
                for sample in range(self.spec.probes.samples):
                    key = content_key(settings, ck.fingerprint, ck.step, ck.adapter_sha, suite.name, q.id, q.text, sample, probes)
                    row = GenerationRow(key, ck.run_id, ck.step, suite.name, q.id, sample, q.text, "", 0, "", {}, settings)
                    wanted.append((GenerationRequest(key, str(ck.path), q.text, sample, probes), row))
        have = self.store.existing("generations", "gen_key", [r.key for r, _ in wanted])
        todo = {r.key: row for r, row in wanted if r.key not in have}
        if todo:

            def on_batch(answers: list[Answer]) -> None:
                rows = []
                for a in answers:
                    base = todo[a.key]
                    rows.append(dataclasses.replace(base, answer=a.text, n_tokens=a.n_tokens, finish=a.finish, probes=a.probes))
                self.store.add_generations(rows)

            self.generator().generate([r for r, _ in wanted if r.key in todo], on_batch)
        gens = {g.gen_key: g for g in self.store.generations(keys=[r.key for r, _ in wanted])}
        return self._judge([gens[r.key] for r, _ in wanted if r.key in gens], ck)

    def stored(self, ck: LiveCheckpoint) -> bool:
        """Whether every probe answer of this checkpoint is stored (replaying it costs no generation)."""
        settings = self.settings()
        keys = [
            content_key(settings, ck.fingerprint, ck.step, ck.adapter_sha, s.name, q.id, q.text, sample, self.ctx.suites.probes(s))
            for s in self.suites
            for q in self.questions(s)
            for sample in range(self.spec.probes.samples)
        ]
        return len(self.store.existing("generations", "gen_key", keys)) == len(keys)

    def _judge(self, gens: list[GenerationRow], ck: LiveCheckpoint | None = None) -> CheckpointMeans:
        questions = {(s.name, q.id): q for s in self.suites for q in s.questions}
        suites = {s.name: s for s in self.suites}
        scores: dict[tuple[str, str], list[float]] = {}
        at = {"adapter": str(ck.path), "adapter_sha": ck.adapter_sha} if ck is not None else {}  # read by the activation judge
        for jspec, judge in self.judges:
            work: list[tuple[str, str, str, JudgeRequest]] = []
            for gen in gens:
                q = questions.get((gen.suite, gen.question_id))
                for trait in self.watched:
                    tdef = suites[gen.suite].traits.get(trait)
                    if tdef is None or not judge.can_score(tdef) or (jspec.traits is not None and trait not in jspec.traits):
                        continue
                    context = {"expected": q.expected if q else None, "probes": gen.probes, **at}
                    req = JudgeRequest(trait, tdef, gen.question, gen.answer, context)
                    work.append((gen.gen_key, trait, judgment_key(judge, req), req))
            keys = sorted({k for _, _, k, _ in work})
            stored = self.store.existing("judgments", "judgment_key", keys)
            self.store.add_judgments([], [(g, judge.name, t, k) for g, t, k, _ in work if k in stored])
            fresh: dict[str, JudgeRequest] = {}
            links: dict[str, list[Link]] = {}
            for g, t, k, req in work:
                if k not in stored:
                    fresh.setdefault(k, req)
                    links.setdefault(k, []).append((g, judge.name, t, k))
            if fresh:
                _send(judge, list(fresh.items()), links, self.store, study_budget(self.ctx, self.store), _ignore)
            by_key = {j.judgment_key: j.score for j in self.store.judgments(keys)}
            for _, t, k, _ in work:
                s = by_key.get(k)
                if s is not None:
                    scores.setdefault((judge.name, t), []).append(float(s))
        return {key: _mean_se(values) for key, values in scores.items()}

    # -- cadence -----------------------------------------------------------------------------
    def due(self, run_id: str, step: int) -> bool:
        """Whether to evaluate this newly saved checkpoint live (``Cadence.due``)."""
        return self.cadence.due(run_id, step, lambda: [c.step for c in self.store.checkpoints(run_id)])

    @property
    def seconds(self) -> float:
        """Time live evaluation took from training (evaluations and the waits they caused)."""
        return self.cadence.seconds

    @property
    def evaluated(self) -> int:
        return self.cadence.evaluated

    @property
    def skipped(self) -> int:
        return self.cadence.skipped

    # -- alarms ------------------------------------------------------------------------------
    def observe(self, ck: LiveCheckpoint, *, stored_only: bool = False) -> list[Alarm]:
        """Evaluate a checkpoint and feed the policy; returns the alarms raised now (new ones only).

        ``stored_only``: replay the checkpoint only if its probe answers are all stored.
        """
        last = self.policy.last_step(ck.run_id)
        if last is not None and ck.step <= last:
            return []
        if stored_only and not self.stored(ck):
            return []
        t0 = time.perf_counter()
        means = self.evaluate(ck)
        self.cadence.charge(time.perf_counter() - t0, evaluation=True)
        fresh = []
        for alarm in self.policy.observe(ck.run_id, ck.step, means):
            info = {k: v for k, v in alarm.to_dict().items() if k in ("onset_step", "last_safe_step", "baseline", "value", "direction")}
            if self.store.add_alarm(alarm.run_id, alarm.step, alarm.judge, alarm.trait, alarm.detector, alarm.message, info):
                act(alarm, self.spec)
                self.store.mark_alarm_acted(alarm.run_id, alarm.judge, alarm.trait, alarm.detector)
                fresh.append(alarm)
        return fresh

    def catch_up(self, run_id: str, before: int, fingerprint: str) -> None:
        """Replay the run's stored checkpoints before ``before`` (after a restart): no new work
        for what is stored, and no alarm acted on twice. Under ``max_overhead`` only the
        checkpoints evaluated before are replayed (the skipped ones stay skipped)."""
        rows = [c for c in self.store.checkpoints(run_id) if c.step < before]
        wanted = set(live_steps([c.step for c in rows], self.spec.every))
        for c in rows:
            if c.step in wanted:
                ck = LiveCheckpoint(run_id, c.step, Path(c.path), c.adapter_sha, fingerprint)
                self.observe(ck, stored_only=self.spec.max_overhead is not None)


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _ignore(n: int) -> None:
    return None


class MonitorCallback:
    """The live monitor inside ``traitwatch run``: a ``TrainCallback`` that evaluates each new
    checkpoint on the probe set (interleaved with training on the same device) and stops the
    run when an alarm's actions include ``stop`` or a stop request file appears."""

    def __init__(self, monitor: LiveMonitor, fingerprints: dict[str, str]) -> None:
        self.monitor = monitor
        self.fingerprints = fingerprints
        self.started: set[str] = set()
        self.alarms: list[Alarm] = []

    def on_checkpoint(self, event: CheckpointEvent) -> bool:
        import torch

        from traitwatch.monitor import stop_requested

        fp = self.fingerprints[event.run_id]
        if event.run_id not in self.started:
            self.monitor.catch_up(event.run_id, event.step, fp)  # a resumed run: what was stored before
            self.started.add(event.run_id)
        if self.monitor.due(event.run_id, event.step):
            t0 = time.perf_counter()
            meta = event.written()  # the folder is complete from here on
            # waiting for the write is the monitor's cost too (training would have gone on)
            self.monitor.cadence.charge(time.perf_counter() - t0)
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):  # the training run's random state stays exact
                fresh = self.monitor.observe(LiveCheckpoint(event.run_id, event.step, event.path, str(meta["adapter_sha"]), fp))
            self.alarms += fresh
            if fresh and "stop" in self.monitor.spec.actions:
                return True
        return stop_requested(event.path.parent) is not None
