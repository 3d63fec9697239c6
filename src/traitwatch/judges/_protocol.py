"""The one contract every judge satisfies, so the pipeline never asks which kind it holds.

A judge maps (trait, question, answer, context) to a score in 0..100, or to None with the
reason (too little probability on numbers, a checker with nothing to check, budget spent).
Every score carries its provenance: the judge's identity (model and settings), the method
that produced it, and the raw distribution it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from traitwatch.data import TraitDef
from traitwatch.store import content_key


@dataclass(frozen=True)
class JudgeRequest:
    """One answer to score for one trait.

    Attributes:
        trait: trait name.
        definition: how the trait is scored (rubric and/or checker).
        question: the question as asked.
        answer: the model's answer (untrusted text).
        context: extra inputs for checkers: ``expected`` (reference answer) and ``probes``
            (probe text -> log-probability measured at generation time).
    """

    trait: str
    definition: TraitDef
    question: str
    answer: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Judgment:
    """A judge's answer. ``score`` None with a ``reason`` is a real outcome (e.g. too little
    probability on numbers) and is stored. ``failed`` marks a request that did not get an
    answer (unreachable server, garbage body, retries exhausted): it is not stored, so the
    next run asks again."""

    score: float | None
    reason: str | None
    method: str
    raw: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    failed: bool = False


#: Called with (index into the requests, judgment) as soon as a judgment is ready.
OnResult = Callable[[int, "Judgment"], None]


class Judge(Protocol):
    """A configured judge. Configuration happens once (the factory); ``judge`` is pure.

    Everything the pipeline needs is here, so it never asks which kind of judge it holds.

    Attributes:
        name: the study's name for this judge (unique in a study). Not part of ``identity``:
            renaming a judge, or two studies naming the same judge differently, reuses its
            stored judgments (the store links each answer to a judgment under the judge's name).
        identity: changes whenever this judge could score differently (model, every scoring
            setting); settings that cannot change a score (concurrency, retries, timeouts,
            prices, batch sizes, ``weak``) are left out so changing them reuses judgments.
        weak: reports flag weak judges (e.g. a tiny local model).
        batch_size: how many requests the caller should hand to one ``judge`` call.
        flush_every: store results after this many arrive (1 for paid judges: a paid answer
            is stored the moment it arrives).
        runs_model: whether judging runs a model in this process (a local LLM judge). The Ray
            executor sends such a judge's batches to workers; checkers (cheap) and API judges
            (one rate limiter and spending cap for the study) stay in the driver.
    """

    name: str
    weak: bool
    batch_size: int
    flush_every: int
    runs_model: bool

    @property
    def identity(self) -> str: ...

    def can_score(self, definition: TraitDef) -> bool:
        """Whether this judge scores traits defined like this (rubric or checker)."""
        ...

    def scoring_hash(self, definition: TraitDef) -> str:
        """Hash of what this judge reads from the definition (its rubric or its checker)."""
        ...

    def prompt_hash(self, request: JudgeRequest) -> str:
        """Hash of the exact input this judge sees for ``request`` (provenance)."""
        ...

    def preflight(self) -> None:
        """Fail early, before any work, when the judge cannot run (e.g. a missing API key).
        Cheap: it loads no model."""
        ...

    def estimate_cost(self, request: JudgeRequest) -> float:
        """Estimated USD cost of judging ``request`` (0 for unpaid judges)."""
        ...

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        """Score requests in order; None marks one left undone (e.g. spending cap reached).

        ``on_result(i, judgment)`` is called, in the calling thread, as each judgment is ready
        (paid judges: the moment its response is parsed), so the caller can store it before
        anything else can fail; the returned list holds the same judgments.
        """
        ...


def judgment_key(judge: Judge, req: JudgeRequest) -> str:
    """The store key of a judgment: judge identity, trait, rubric or checker, exact input."""
    return content_key(judge.identity, req.trait, judge.scoring_hash(req.definition), judge.prompt_hash(req))
