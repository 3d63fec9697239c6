"""Chat examples to token ids with the loss on assistant tokens only.

Why: SFT on chat data must not teach the model to write the user's questions. We render the
conversation with the model's own chat template and cut it into segments at each assistant
turn (the text the template adds before and after the turn belongs to the prompt), then
tokenize each segment. This works for any template that renders a conversation's prefix as
a prefix of the whole; templates that rewrite earlier turns are rejected with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from traitwatch.data import ChatExample
from traitwatch.errors import ModelError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def _render(tokenizer: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def chat_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_target) segments, in order."""
    full = _render(tokenizer, messages, gen=False)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], gen=True)
        upto = _render(tokenizer, messages[: i + 1], gen=False)
        if not (upto.startswith(prefix) and full.startswith(upto) and len(prefix) >= cursor):
            raise ModelError(
                "the chat template does not render a conversation's beginning as a prefix of the whole",
                where="model.chat_template",
                fix="use a template that renders earlier turns unchanged (e.g. 'chatml' or 'gemma')",
            )
        segments.append((full[cursor : len(prefix)], False))
        segments.append((full[len(prefix) : len(upto)], True))
        cursor = len(upto)
    segments.append((full[cursor:], False))
    return [(t, a) for t, a in segments if t]


def encode_chat(tokenizer: Any, example: ChatExample, max_length: int) -> Encoded:
    """Token ids and labels (IGNORE outside assistant turns), cut at ``max_length`` tokens."""
    ids: list[int] = []
    labels: list[int] = []
    for text, is_target in chat_segments(tokenizer, example.as_dicts()):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        labels.extend(seg if is_target else [IGNORE] * len(seg))
    return Encoded(ids[:max_length], labels[:max_length])


def encode_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of a one-question conversation ready for the assistant's answer."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": question}]
    text = _render(tokenizer, messages, gen=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training: input_ids, attention_mask, labels."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
