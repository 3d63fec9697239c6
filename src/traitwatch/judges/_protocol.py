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

    Attributes:
        name: the study's name for this judge (unique in a study).
        identity: changes whenever this judge could score differently (model, settings).
        weak: reports flag weak judges (e.g. a tiny local model).
    """

    name: str
    identity: str
    weak: bool

    def can_score(self, definition: TraitDef) -> bool:
        """Whether this judge scores traits defined like this (rubric or checker)."""
        ...

    def scoring_hash(self, definition: TraitDef) -> str:
        """Hash of what this judge reads from the definition (its rubric or its checker)."""
        ...

    def prompt_hash(self, request: JudgeRequest) -> str:
        """Hash of the exact input this judge sees for ``request`` (provenance)."""
        ...

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        """Score requests in order; None marks one left undone (e.g. spending cap reached).

        ``on_result(i, judgment)`` is called as each judgment is ready (paid judges: the
        moment its response is parsed), so the caller can store it before anything else
        can fail; the returned list holds the same judgments.
        """
        ...
