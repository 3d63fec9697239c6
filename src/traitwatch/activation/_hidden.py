"""Mean hidden states over a span of tokens: the one measurement the activation judge makes.

Why one function: extracting a trait's direction (mean activations of answers under the
positive and negative prompts) and scoring a checkpoint (the projection of its activations)
read the same quantity, the residual stream averaged over some tokens of a sequence, so both
use this. Rows may come from different LoRA checkpoints: with a :class:`StackedLora` (the
generator's batched LoRA, ``traitwatch.generate._stacked``) row i runs through adapter slot
``slots[i]``, so many checkpoints share one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from traitwatch.generate._stacked import StackedLora
from traitwatch.models import LoadedModel, left_pad


@dataclass(frozen=True)
class Span:
    """A token sequence and the part of it to average: ``ids[start:]`` (``start`` < len(ids))."""

    ids: list[int]
    start: int


@torch.no_grad()
def span_means(
    base: LoadedModel,
    spans: Sequence[Span],
    *,
    layers: Sequence[int] | None = None,
    stacked: StackedLora | None = None,
    slots: Sequence[int] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Mean hidden state over each span, per layer: float32 ``[len(spans), n_layers, hidden]``.

    Args:
        base: the resident base model.
        spans: the sequences and where the averaged part starts.
        layers: indices into the model's hidden states (0 = embeddings, i = after block i);
            None for all of them.
        stacked: checkpoints stacked on ``base.model``; with ``slots``, row i uses slot i.
        slots: adapter slot per span (with ``stacked``).
        batch_size: rows per forward pass (sorted by length so padding stays small).
    """
    if stacked is not None and (slots is None or len(slots) != len(spans)):
        raise ValueError("stacked needs one slot per span")
    pad = int(base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0)
    order = sorted(range(len(spans)), key=lambda i: len(spans[i].ids))
    out: list[torch.Tensor | None] = [None] * len(spans)
    model: Any = base.model
    model.eval()
    for b in range(0, len(order), batch_size):
        part = order[b : b + batch_size]
        ids, mask = left_pad([spans[i].ids for i in part], pad, base.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "output_hidden_states": True, "use_cache": False}
        kwargs["logits_to_keep"] = 1  # the output layer is not needed (262k words on Gemma): one position, not all
        if stacked is not None:
            assert slots is not None
            with stacked.rows([slots[i] for i in part]):
                hidden = model(**kwargs).hidden_states
        else:
            hidden = model(**kwargs).hidden_states
        chosen = hidden if layers is None else [hidden[layer] for layer in layers]
        stack = torch.stack([h.float() for h in chosen], dim=1)  # [B, L, T, H]
        width = ids.shape[1]
        for row, i in enumerate(part):
            n = len(spans[i].ids)
            first = width - n + spans[i].start  # left padding shifts every row to end at ``width``
            out[i] = stack[row, :, first:, :].mean(dim=1).cpu()
    return torch.stack([t for t in out if t is not None]) if spans else torch.zeros(0)
