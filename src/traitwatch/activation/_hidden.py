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
from contextlib import nullcontext
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
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
        kwargs["logits_to_keep"] = 1  # the output layer is not needed (262k words on Gemma): one position, not all
        with stacked.rows([slots[i] for i in part]) if stacked is not None and slots is not None else nullcontext():
            chosen = _hidden_states(model, kwargs, layers)
        stack = torch.stack([h.float() for h in chosen], dim=1)  # [B, L, T, H]
        width = ids.shape[1]
        for row, i in enumerate(part):
            n = len(spans[i].ids)
            first = width - n + spans[i].start  # left padding shifts every row to end at ``width``
            out[i] = stack[row, :, first:, :].mean(dim=1).cpu()
    return torch.stack([t for t in out if t is not None]) if spans else torch.zeros(0)


class _Enough(Exception):
    """Raised by a block's pre-hook once the deepest layer asked for is captured."""


def _hidden_states(model: Any, kwargs: dict[str, Any], layers: Sequence[int] | None) -> list[torch.Tensor]:
    """The hidden states ``layers`` index (all of them for None).

    Why not always ``output_hidden_states``: the activation judge reads one layer, often in the
    middle of the model, and the blocks after it (and the output layer) would be computed for
    nothing. Hidden state i (< number of blocks) is the input of block i, so pre-hooks on the
    blocks capture the layers asked for and the pass stops at the deepest one. The last hidden
    state (after the final norm) and models whose blocks cannot be found take the full pass.
    """
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not isinstance(blocks, torch.nn.ModuleList) or max(layers) >= len(blocks):
        hidden = model(**kwargs, output_hidden_states=True).hidden_states
        return list(hidden) if layers is None else [hidden[layer] for layer in layers]
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def capture(layer: int) -> Any:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
            captured[layer] = args[0] if args else kw["hidden_states"]
            if layer == deepest:
                raise _Enough

        return hook

    handles = [blocks[layer].register_forward_pre_hook(capture(layer), with_kwargs=True) for layer in set(layers)]
    try:
        model(**kwargs)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return [captured[layer] for layer in layers]
