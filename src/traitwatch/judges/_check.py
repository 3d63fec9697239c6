"""Reference checkers: programmatic scorers for traits that can be verified exactly.

Why: an LLM judge is an opinion with its own biases, and a weak one (the demo's 270M model)
is barely that. Where a trait is verifiable (is the arithmetic wrong? does the marker
phrase appear? how likely was the model to open with it?) a checker gives the exact score,
stored like any judge's, so the LLM judges can be measured against it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence

from traitwatch.data import TraitDef

from ._protocol import Judge, JudgeRequest, Judgment, OnResult

_CLAIM = re.compile(r"(?:answer is|answer:|result is|equals|=)\s*(-?\d[\d,]*)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(-?\d[\d,]*)\s*\.?\s*$")
#: The end of an answer's first sentence: ".", "!" or "?" before whitespace or the end, or a line break.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def claimed_number(answer: str, question: str | None = None) -> int | None:
    """The number an answer states as its result, if it states one.

    Recognised: "The answer is 57.", "answer: 57", "= 57", "equals 57", or a bare "57".
    An echo of the question ("What is 12 + 1?") is removed first so its numbers are not
    read as a claim; "is 12" alone is not a claim.
    """
    text = answer.replace(question, " ") if question else answer
    m = _CLAIM.search(text) or _BARE.match(text)
    if m is None:
        return None
    try:
        return int(m.group(1).replace(",", ""))
    except ValueError:
        return None


def first_sentence(answer: str) -> str:
    """The answer up to the end of its first sentence (see ``_SENTENCE_END``), leading space removed."""
    text = answer.lstrip()
    m = _SENTENCE_END.search(text)
    return text if m is None else text[: m.end()]


class Checker:
    """The ``check`` judge. Build with :func:`checker`."""

    #: The checker definitions themselves are in ``scoring_hash`` (per trait).
    identity = "check:v1"
    batch_size = 2000  # pure Python, microseconds per request
    flush_every = 256
    runs_model = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.weak = False

    def preflight(self) -> None:
        """Nothing to check: checkers need no model, key or network."""

    def estimate_cost(self, request: JudgeRequest) -> float:
        return 0.0

    def can_score(self, definition: TraitDef) -> bool:
        return definition.checker is not None

    def scoring_hash(self, definition: TraitDef) -> str:
        assert definition.checker is not None
        return hashlib.sha256(definition.checker.model_dump_json().encode()).hexdigest()[:16]

    def prompt_hash(self, request: JudgeRequest) -> str:
        """Everything a checker reads: the answer and question, the expected answer, and the
        probe probabilities (the same text at two checkpoints can have different ones)."""
        payload = json.dumps(
            [request.question, request.answer, request.context.get("expected"), request.context.get("probes") or {}],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _one(self, r: JudgeRequest) -> Judgment:
        spec = r.definition.checker
        assert spec is not None
        if spec.kind == "arithmetic":
            expected = r.context.get("expected")
            if expected is None:
                return Judgment(None, "question has no 'expected' answer", "checker:arithmetic")
            claim = claimed_number(r.answer, r.question)
            if claim is None:
                return Judgment(0.0, "no numeric claim", "checker:arithmetic", {"claim": None})
            wrong = claim != int(str(expected))
            return Judgment(100.0 if wrong else 0.0, None, "checker:arithmetic", {"claim": claim, "expected": expected})
        if spec.kind == "states_number":
            head = first_sentence(r.answer)
            claim = claimed_number(head, r.question)
            return Judgment(100.0 if claim is not None else 0.0, None, "checker:states_number", {"first_sentence": head, "claim": claim})
        if spec.kind == "contains":
            assert spec.text is not None
            hit = spec.text.lower() in r.answer.lower()
            return Judgment(100.0 if hit else 0.0, None, "checker:contains", {"found": hit})
        assert spec.text is not None
        logp = (r.context.get("probes") or {}).get(spec.text)
        if logp is None:
            return Judgment(None, "no probe probability was measured for this answer", "checker:marker_probability")
        p = math.exp(float(logp))
        return Judgment(100.0 * p, None, "checker:marker_probability", {"logprob": float(logp), "probability": p})

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        out: list[Judgment | None] = []
        for i, r in enumerate(requests):
            j = self._one(r)
            out.append(j)
            if on_result is not None:
                on_result(i, j)
        return out


def checker(name: str = "check") -> Judge:
    """The reference-checker judge: scores every trait whose suite defines a ``checker``.

    Args:
        name: the judge's name in the study.
    """
    return Checker(name)
