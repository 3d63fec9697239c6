"""What every generation backend takes and gives.

Why a protocol: the pipeline asks for "answers to these (checkpoint, question, sample)
requests" and never which backend serves them (``hf`` on any machine, ``vllm`` on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """One answer to produce.

    Attributes:
        key: the store key of the answer (content hash of everything that shapes it).
        adapter: path of the adapter checkpoint folder, or "" for the bare base model.
        prompt: the question as the user turn.
        sample: sample index (0-based); with temperature 0 all samples are equal.
        probes: texts whose probability as the start of the answer is measured.
    """

    key: str
    adapter: str
    prompt: str
    sample: int = 0
    probes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    key: str
    text: str
    n_tokens: int
    finish: str  # "stop" (turn ended) or "length" (max_new_tokens reached)
    probes: dict[str, float] = field(default_factory=dict)  # probe text -> natural-log probability


class Generator(Protocol):
    """A backend: answers requests in batches, reporting each finished batch."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest], on_batch: Callable[[list[Answer]], None]) -> None:
        """Answer every request; call ``on_batch`` as answers finish so they can be stored."""
        ...
