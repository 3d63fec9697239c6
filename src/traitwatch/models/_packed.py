"""Linear layers with their weights pre-packed for oneDNN, for inference on a CPU.

Why: a decode step multiplies a few dozen rows by each weight matrix. On a CPU, PyTorch's
plain ``linear`` re-lays the weight into oneDNN's blocked format on every call; packing it
once (``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile``'s CPU freezing
does) made the 262k-word output layer of Gemma 3 270M take 29 ms instead of 43 ms at 64 rows
and its trunk's layers 20-40% less, with bit-identical outputs (measured, torch 2.13 CPU,
AVX-512 BF16). The packed copy costs the layers' weight memory once more, so packing is
scoped to a block (:func:`packed_linears`) and skipped when memory is short.

Only for inference (no autograd through the packed op) on a CPU in bfloat16 or float32,
and only where PyTorch has the op and it reproduces ``linear`` on a probe; otherwise every
function here does nothing and the model runs as it is.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn


def _op_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` [out, in] in oneDNN's layout for about ``rows`` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``linear(x, W, bias)`` for a weight packed by :func:`pack`; any leading dimensions."""
    flat = x.reshape(-1, x.shape[-1])
    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [None], "")
    return y.view(*x.shape[:-1], out_features)


def can_pack(model: nn.Module) -> bool:
    """Whether this model's linear layers can be packed here: CPU, bf16/fp32, the op exists and
    gives ``linear``'s exact result on a probe."""
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "cpu" and _exact(param.dtype)


@functools.cache
def _exact(dtype: torch.dtype) -> bool:
    """The op exists and reproduces ``linear`` bit for bit in ``dtype`` (probed once per dtype:
    the answer depends only on the torch build and the CPU)."""
    if dtype not in (torch.bfloat16, torch.float32) or not _op_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(48, 32, generator=gen).to(dtype)
        x = torch.randn(5, 32, generator=gen).to(dtype)
        return bool(torch.equal(packed_linear(x, pack(w, 5), None, 48), nn.functional.linear(x, w)))
    except (RuntimeError, AttributeError, TypeError):
        return False


def _worth_packing(module: nn.Module, nbytes: int) -> bool:
    """Pack ``module``'s weights (``nbytes`` of copies) now: inference, packable here, and the
    copies take at most a quarter of the free memory."""
    return nbytes > 0 and not torch.is_grad_enabled() and can_pack(module) and nbytes * 4 <= free_bytes()


def free_bytes() -> int:
    """Memory available now (Linux's MemAvailable: free plus reclaimable caches), in bytes;
    the free pages where that is unknown; 0 when neither is known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


@contextmanager
def packed_linears(model: nn.Module, rows: int, *, skip: tuple[nn.Module, ...] = ()) -> Iterator[bool]:
    """Within this block, every ``nn.Linear`` of ``model`` (but ``skip``) runs on a packed copy
    of its weight; yields whether it packed. The model is unchanged on exit.

    Skipped (yields False) off the CPU, without the op, under autograd, or when the copies
    would take more than a quarter of the free memory.
    """
    linears = [m for m in model.modules() if type(m) is nn.Linear and not any(m is s for s in skip)]
    need = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    if not _worth_packing(model, need):
        yield False
        return
    for m in linears:
        packed = pack(m.weight, rows)
        bias, out_features = m.bias, m.out_features

        def forward(x: torch.Tensor, _p: Any = packed, _b: Any = bias, _o: int = out_features) -> torch.Tensor:
            return packed_linear(x, _p, _b, _o)

        m.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield True
    finally:
        for m in linears:
            del m.forward


class PackedHead:
    """The output layer, packed in slices of the vocabulary, for greedy picks (see
    :func:`traitwatch.generate._decode.greedy_pick`). None-like when packing is unavailable:
    check :attr:`slices`."""

    def __init__(self, head: nn.Module, rows: int, chunk: int = 16384) -> None:
        self.slices: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        weight = cast(torch.Tensor, head.weight)
        bias = cast("torch.Tensor | None", getattr(head, "bias", None))
        if not _worth_packing(head, weight.numel() * weight.element_size()):
            return
        for start in range(0, weight.shape[0], chunk):
            w = weight[start : start + chunk]
            self.slices.append((start, pack(w, rows), None if bias is None else bias[start : start + chunk].detach()))
