"""The ``activation`` judge: a trait's score from a checkpoint's activations, no judge call.

Why a judge: its scores go into the store like any judge's (linked to the stored answers),
so curves, onsets, leads, agreement with the LLM judges, the report and the live monitor use
them unchanged. What differs is what it reads: the checkpoint (``context["adapter"]``, which
the judge stage and the live monitor supply) and the trait's direction (:mod:`._directions`),
not a rubric.

A score is one forward pass of the checkpoint: with ``span: prompt`` over the question alone
(the last prompt token's activation; every sample of a question at a checkpoint shares the
judgment, so it costs one pass per question and needs no answer), with ``span: answer`` over
the question and the stored answer (the mean over the answer's tokens). The projection on the
trait's unit direction at the chosen layer is mapped to 0..100 between the base model's mean
projections under the negative (0) and positive (100) system prompts, clipped; the raw
projection is kept in the judgment's ``raw``. Many checkpoints share a forward pass through
the stacked LoRA path (``traitwatch.generate._stacked``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from traitwatch.data import TraitDef
from traitwatch.errors import JudgeError, ModelError
from traitwatch.generate._stacked import NotStackable, StackedLora
from traitwatch.judges._protocol import Judge, JudgeRequest, Judgment, OnResult
from traitwatch.models import LoadedModel
from traitwatch.train import encode_prompt

from ._directions import ExtractionSettings, SpanKind, TraitDirection, direction_key, extract_direction
from ._hidden import Span, span_means

METHOD = "activation-projection-v1"


@dataclass
class DirectionSource:
    """Where an activation judge gets each trait's direction: from ``folder`` if built, else built.

    Attributes:
        folder: the study's ``activation/`` folder (directions and work files).
        questions: trait -> (question, expected) of the suite that defines it (the extraction set).
        filter_judge: builds the judge whose scores filter the answers (None: keep all).
        settings: extraction settings (``filter_identity`` is filled from the filter judge).
        definitions: trait -> its definition in that suite (to name the trait of a definition).
        batch_size: rows per generate / forward call while extracting.
    """

    folder: Path
    questions: Mapping[str, Sequence[tuple[str, str | None]]]
    filter_judge: Callable[[], Judge] | None
    settings: ExtractionSettings
    definitions: Mapping[str, TraitDef] = field(default_factory=dict)
    batch_size: int = 16

    def __post_init__(self) -> None:
        self._filter: Judge | None = None
        self._cache: dict[str, TraitDirection] = {}

    @property
    def filter(self) -> Judge | None:
        if self._filter is None and self.filter_judge is not None:
            self._filter = self.filter_judge()
        return self._filter

    def effective(self) -> ExtractionSettings:
        f = self.filter
        return ExtractionSettings(**{**self.settings.__dict__, "filter_identity": f.identity if f is not None else None})

    def trait_of(self, definition: TraitDef) -> str | None:
        """The trait this definition belongs to (the first of equal definitions)."""
        return next((t for t, d in self.definitions.items() if d == definition), None)

    def path(self, base: LoadedModel, trait: str, definition: TraitDef) -> Path:
        key = direction_key(base.identity, trait, definition, [q for q, _ in self.questions[trait]], self.effective())
        return self.folder / f"{trait}-{key}.safetensors"

    def get(self, base: LoadedModel, trait: str, definition: TraitDef) -> TraitDirection:
        """The stored direction, or a new one built and stored (a kill mid-way resumes)."""
        path = self.path(base, trait, definition)
        if str(path) in self._cache:
            return self._cache[str(path)]
        if path.exists():
            direction = TraitDirection.load(path)
        else:
            f = self.filter
            if f is not None and not f.can_score(definition):
                raise JudgeError(
                    f"the filter judge {f.name} cannot score trait {trait}",
                    where=f"activation direction for trait {trait}",
                    fix="name a filter_judge that scores it (a rubric for LLM judges, a checker for check), or none",
                )
            score = None if f is None else _filter_fn(f, trait, definition)
            direction = extract_direction(
                base,
                trait,
                definition,
                self.questions[trait],
                self.effective(),
                score=score,
                workfile=path.with_suffix(".work.json"),
                batch_size=self.batch_size,
            )
            direction.save(path)
            path.with_suffix(".work.json").unlink(missing_ok=True)
        self._cache[str(path)] = direction
        return direction


def _filter_fn(judge: Judge, trait: str, definition: TraitDef) -> Callable[[Sequence[tuple[str, str | None, str]]], list[float | None]]:
    def score(items: Sequence[tuple[str, str | None, str]]) -> list[float | None]:
        reqs = [JudgeRequest(trait, definition, q, a, {"expected": e}) for q, e, a in items]
        out: list[float | None] = []
        for i in range(0, len(reqs), judge.batch_size):
            for res in judge.judge(reqs[i : i + judge.batch_size]):
                if res is None or res.failed:
                    raise JudgeError(
                        f"the filter judge {judge.name} gave no answer ({res.reason if res else 'not sent'})",
                        where=f"activation direction for trait {trait}",
                        fix="check the filter judge and rerun; answers and scores made so far are kept",
                    )
                out.append(res.score)
        return out

    return score


class ActivationJudge:
    """See module docstring. Build with :func:`activation_judge` or ``build_judge``."""

    flush_every = 64
    #: Runs the model, but in the driver: it needs the study's folder and its filter judge.
    runs_model = False

    def __init__(
        self,
        name: str,
        base: Callable[[], LoadedModel],
        directions: DirectionSource | None,
        *,
        span: SpanKind = "prompt",
        batch_size: int = 16,
        adapters_per_batch: int = 16,
        weak: bool = False,
    ) -> None:
        self.name = name
        self._load = base
        self._base: LoadedModel | None = None
        self.directions = directions
        self.span: SpanKind = span
        self.forward_batch_size = batch_size
        self.batch_size = batch_size * adapters_per_batch  # requests per judge() call: many checkpoints share it
        self.adapters_per_batch = adapters_per_batch
        self.weak = weak
        self._prompt_ids: dict[str, list[int]] = {}

    @property
    def base(self) -> LoadedModel:
        if self._base is None:
            self._base = self._load()
        return self._base

    @property
    def identity(self) -> str:
        """Model, span and every extraction setting (the filter judge's identity included)."""
        settings = self.directions.effective().tag() if self.directions is not None else "none"
        return f"activation:{self.base.identity}:{self.span}:{settings}"

    def can_score(self, definition: TraitDef) -> bool:
        return bool(definition.instructions)

    def scoring_hash(self, definition: TraitDef) -> str:
        """The instructions, what the filter reads (rubric / checker) and the extraction questions."""
        trait = self.directions.trait_of(definition) if self.directions is not None else None
        questions = [q for q, _ in self.directions.questions[trait]] if self.directions is not None and trait else []
        payload = json.dumps([[p.pos, p.neg] for p in definition.instructions] + [definition.model_dump(), questions], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def prompt_hash(self, request: JudgeRequest) -> str:
        """The checkpoint (its adapter's hash) and the question, plus the answer for ``span: answer``."""
        parts = [request.context.get("adapter_sha") or request.context.get("adapter") or "", request.question]
        if self.span == "answer":
            parts.append(request.answer)
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def preflight(self) -> None:
        """Nothing to check before work: no key, no network; the model loads on first use."""

    def estimate_cost(self, request: JudgeRequest) -> float:
        return 0.0

    def _prompt(self, question: str) -> list[int]:
        if question not in self._prompt_ids:
            self._prompt_ids[question] = encode_prompt(self.base.tokenizer, question)
        return self._prompt_ids[question]

    def _span(self, r: JudgeRequest) -> Span | None:
        prompt = self._prompt(r.question)
        if self.span == "prompt":
            return Span(prompt, len(prompt) - 1)
        answer = list(self.base.tokenizer(r.answer, add_special_tokens=False)["input_ids"])
        return Span(prompt + answer, len(prompt)) if answer else None

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        if self.directions is None:
            raise JudgeError(
                "the activation judge has no study to read its directions from",
                where=f"judge {self.name}",
                fix="run it through traitwatch judge / run (the study's judge stage)",
            )
        results: list[Judgment | None] = [None] * len(requests)

        def done(i: int, res: Judgment) -> None:
            results[i] = res
            if on_result is not None:
                on_result(i, res)

        by_adapter: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            adapter = r.context.get("adapter")
            if adapter is None:
                done(i, Judgment(None, "no checkpoint given: the activation judge scores checkpoints", METHOD, failed=True))
            else:
                by_adapter[str(adapter)].append(i)
        dirs: dict[str, TraitDirection] = {}
        for r in requests:
            if r.trait not in dirs:
                dirs[r.trait] = self.directions.get(self.base, r.trait, r.definition)
        adapters = sorted(by_adapter)
        for c in range(0, len(adapters), self.adapters_per_batch):
            chunk = adapters[c : c + self.adapters_per_batch]
            try:
                stacked = StackedLora(self.base.model, chunk)
            except NotStackable as why:
                raise ModelError(
                    f"the activation judge needs stackable plain-LoRA checkpoints ({why})",
                    where=f"judge {self.name}",
                    fix="use plain LoRA adapters (no DoRA, patterns or modules_to_save), or another judge kind",
                ) from None
            try:
                rows = [(i, slot, self._span(requests[i])) for slot, a in enumerate(chunk) for i in by_adapter[a]]
                for i, _, span in rows:
                    if span is None:
                        done(i, Judgment(None, "empty answer: nothing to project", METHOD))
                live = [(i, slot, span) for i, slot, span in rows if span is not None]
                layers = sorted({dirs[requests[i].trait].layer for i, _, _ in live})
                if not live:
                    continue
                means = span_means(
                    self.base,
                    [s for _, _, s in live],
                    layers=layers,
                    stacked=stacked,
                    slots=[slot for _, slot, _ in live],
                    batch_size=self.forward_batch_size,
                )
            finally:
                stacked.close()
            units = {t: d.unit() for t, d in dirs.items()}
            for row, (i, _, _) in enumerate(live):
                d = dirs[requests[i].trait]
                proj = float(means[row, layers.index(d.layer)] @ units[requests[i].trait])
                raw = {"projection": proj, "layer": d.layer, "span": self.span, "reference": d.reference}
                done(i, Judgment(d.score(proj, self.span), None, METHOD, raw=raw))
        return results


def activation_judge(
    name: str,
    base: LoadedModel | Callable[[], LoadedModel],
    directions: DirectionSource,
    *,
    span: SpanKind = "prompt",
    batch_size: int = 16,
    adapters_per_batch: int = 16,
    weak: bool = False,
) -> ActivationJudge:
    """A judge scoring checkpoints by their activations' projection on each trait's direction.

    Args:
        name: the judge's name in the study.
        base: the study's base model (or a loader called on first use).
        directions: where trait directions are read or built (:class:`DirectionSource`).
        span: ``prompt`` (last prompt token; one pass per question, no answer needed) or
            ``answer`` (mean over the stored answer's tokens).
        batch_size: rows per forward pass.
        adapters_per_batch: checkpoints stacked into one forward pass.
        weak: mark it weak in reports.
    """
    loader = base if callable(base) else (lambda: base)
    return ActivationJudge(name, loader, directions, span=span, batch_size=batch_size, adapters_per_batch=adapters_per_batch, weak=weak)


def project(direction: TraitDirection, means: torch.Tensor) -> torch.Tensor:
    """Projections of mean activations ``[n, hidden]`` (at the direction's layer) on its unit direction."""
    return means.float() @ direction.unit()
