"""Many LoRA checkpoints applied to one resident base model in a single batch, stacked.

Why not peft's mixed-adapter batches: for every adapted layer peft loops over the adapters
present in the batch, selecting and scattering their rows: K small matrix products plus
index copies per layer per decode step. With 16 checkpoints in a batch on the 270M Gemma
that loop costs about as much as the base model itself (measured in ``bench/``); on a GPU it
is thousands of tiny kernel launches per step.

Here the K adapters of every adapted linear layer are stacked into tensors (``A`` of all
slots side by side, ``B * scale`` likewise) and a forward hook adds each row's own adapter
product to the layer's output: in a decode step by batched products over the runs of rows
that share an adapter, in a prefill by one product per adapter, and for rows in any order by
one dense product over all adapters with the other adapters' columns masked to zero (see
:class:`StackedLora`). That is a few products per layer whatever K is, with no per-adapter
Python loop in the decode step.

Only plain LoRA on linear layers is stacked (no DoRA, biases, rank/alpha patterns or
``modules_to_save``); :func:`can_stack` says whether a set of adapters qualifies and the
generator falls back to peft when not. Under greedy decoding the answers equal those of peft
with one adapter at a time (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

_PREFIX = "base_model.model."


def adapter_config(path: str) -> dict[str, Any]:
    """A peft adapter folder's adapter_config.json."""
    return json.loads((Path(path) / "adapter_config.json").read_text())


def can_stack(model: nn.Module, adapters: Sequence[str]) -> str | None:
    """None when these adapter folders can be stacked onto ``model``, else the reason why not."""
    modules = dict(model.named_modules())
    for path in adapters:
        if not path:
            continue
        try:
            cfg = adapter_config(path)
        except (OSError, ValueError) as exc:
            return f"{path}: unreadable adapter_config.json ({exc})"
        if cfg.get("peft_type") != "LORA":
            return f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA"
        for key, plain in (("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False), ("lora_bias", False)):
            if cfg.get(key, plain) not in (plain, None):
                return f"{path}: {key}={cfg.get(key)!r}"
        for key in (
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "trainable_token_indices",
            "target_parameters",
            "layer_replication",
        ):
            if cfg.get(key):
                return f"{path}: {key} is set"
        if not (Path(path) / "adapter_model.safetensors").is_file():
            return f"{path}: no adapter_model.safetensors"
        targets = cfg.get("target_modules") or []
        if isinstance(targets, str):
            return f"{path}: target_modules is a pattern ({targets!r}), not a list of modules"
        for name in targets:
            mod = modules.get(name)
            if mod is not None and type(mod) is not nn.Linear:
                return f"{path}: {name} is a {type(mod).__name__}, not a plain Linear"
    return None


class NotStackable(ValueError):
    """These adapters are valid but cannot be stacked (see :func:`can_stack`); use peft."""


@dataclass
class _Plan:
    """How the rows of the current batch map onto the adapter stack, for passes of one token per
    row (decode steps): ``n`` runs of rows, padded to ``m`` rows each, adapter ``slots[j]`` for run
    j. ``pad`` (``n*m`` row indices) and ``unpad`` (each row's place in the padded layout) are
    None when every run has exactly ``m`` rows and the runs follow each other (a view suffices)."""

    slots: torch.Tensor
    n: int
    m: int
    span: slice | None  # the runs' slots are this contiguous range of the stack: a view of it
    pad: torch.Tensor | None
    unpad: torch.Tensor | None


class StackedLora:
    """K LoRA adapters hooked onto a base model; choose each row's adapter with :meth:`rows`.

    Slot 0 is the bare base model (no adapter); adapter ``adapters[i]`` is slot ``i``
    (an empty path is also the bare base). Call :meth:`close` (or use as a context manager)
    to remove the hooks: the base model is never modified.

    The adapters live in one stack per layer: ``A`` [slots, siblings x r, in] for a group of
    sibling layers that read the same input (q/k/v of an attention block, gate/up of an MLP)
    and ``B * scale`` [slots, r, out] per layer, r the largest rank (smaller ranks and slots
    without the layer are zero-padded: they add exact zeros, but take the largest rank's memory
    and work; the hf generator therefore attaches adapters by rank, ``_hf.adapter_order``).
    Three ways to apply them, by the pass:

    * one token per row and rows grouped by adapter (a decode step): batched matrix products,
      each row against its own adapter only (``bmm``; runs of unequal length are padded);
    * several tokens per row, rows grouped (a prefill): one product per adapter on its rows;
    * rows in any order: every adapter's columns for every row, the others masked to zero
      (two dense products per layer; K times the work of the others).
    """

    def __init__(self, model: nn.Module, adapters: Sequence[str]) -> None:
        reason = can_stack(model, adapters)
        if reason is not None:
            raise NotStackable(reason)
        self.model = model
        self.adapters = list(adapters)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        modules = dict(model.named_modules())
        parts: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}  # name -> slot -> (A, B*scale)
        for slot, path in enumerate(self.adapters):
            if path:
                for name, ab in _read_adapter(path, modules).items():
                    parts.setdefault(name, {})[slot] = ab
        n = len(self.adapters)
        self.rank = max((a.shape[0] for per in parts.values() for a, _ in per.values()), default=1)
        r = self.rank
        # siblings: same parent module, same input width
        groups: dict[tuple[str, int], list[str]] = {}
        for name in sorted(parts):
            groups.setdefault((name.rpartition(".")[0], modules[name].in_features), []).append(name)
        self._group_of: dict[str, tuple[int, int]] = {}  # name -> (group, sibling index)
        self._a: list[torch.Tensor] = []  # group -> [slots, siblings * r, in]
        self._b: dict[str, torch.Tensor] = {}  # name -> [slots, r, out]
        self._has: list[set[int]] = []  # group -> slots with weights in it
        for (_, width), names in groups.items():
            g = len(self._a)
            a3 = torch.zeros(n, len(names) * r, width)
            has: set[int] = set()
            for i, name in enumerate(names):
                b3 = torch.zeros(n, r, modules[name].out_features)
                for slot, (a, b) in parts[name].items():
                    a3[slot, i * r : i * r + a.shape[0]] = a
                    b3[slot, : a.shape[0]] = b.t()
                    has.add(slot)
                self._b[name] = b3.to(self.device, self.dtype)
                self._group_of[name] = (g, i)
            self._a.append(a3.to(self.device, self.dtype))
            self._has.append(has)
        self._slots: torch.Tensor | None = None
        self._runs: list[tuple[int, int, int]] | None = None  # (slot, first row, end row) when rows are grouped
        self._plan: _Plan | None = None
        self._mask: torch.Tensor | None = None  # one-hot slot of each row, for the masked product
        self._low: dict[int, tuple[torch.Tensor, Any]] = {}  # group -> (input, its low-rank product)
        self._picked: dict[tuple[str, Any], torch.Tensor] = {}  # stacks selected for the plan
        self._hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self._b]

    def slot(self, adapter: str) -> int:
        """The slot of an adapter path given at construction."""
        return 0 if not adapter else self.adapters.index(adapter)

    # -- the three products ---------------------------------------------------------------------
    def _once(self, g: int, x: torch.Tensor, compute: Any) -> Any:
        """Group ``g``'s low-rank product of ``x``, computed by the first sibling to see ``x`` and
        reused by the others (the same tensor object)."""
        cached = self._low.get(g)
        if cached is None or cached[0] is not x:
            cached = self._low[g] = (x, compute())
        return cached[1]

    def _masked(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Rows in any order: ``x @ A^T`` for every slot, each row's other slots zeroed, then this
        layer's columns as [.., slots * r] for a product with its ``B`` viewed [slots * r, out]."""
        g, i = self._group_of[name]
        a3 = self._a[g]
        n, width, r = a3.shape[0], a3.shape[1], self.rank

        def compute() -> torch.Tensor:
            if self._mask is None:
                assert self._slots is not None
                self._mask = nn.functional.one_hot(self._slots, n).to(self.dtype)
            low = nn.functional.linear(x.to(self.dtype), a3.view(n * width, -1))
            mask = self._mask[:, None, :, None] if low.dim() == 3 else self._mask[:, :, None]
            low.view(*low.shape[:-1], n, width).mul_(mask)  # fresh: in place
            return low

        low = self._once(g, x, compute)
        return low.view(*low.shape[:-1], n, width)[..., i * r : (i + 1) * r].reshape(*low.shape[:-1], n * r)

    def _segmented(self, name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """Several tokens per row, rows grouped: add each run's own ``x[run] @ A_s^T @ B_s^T`` to
        ``out`` in place.

        Why, for the prefill: the masked product computes every adapter's columns for every row
        (K times the LoRA work); with many tokens per row that is a large share of the pass
        (about a third of the base model's work at K=16, rank 8).
        """
        assert self._runs is not None
        g, i = self._group_of[name]
        r = self.rank
        runs = self._runs

        def compute() -> dict[int, torch.Tensor]:
            return {a: nn.functional.linear(x[a:b].to(self.dtype), self._a[g][s]) for s, a, b in runs if s in self._has[g]}

        lows = self._once(g, x, compute)
        for slot, a, b in runs:
            if a in lows:
                part = out[a:b].view(-1, out.shape[-1])
                part.addmm_(lows[a][..., i * r : (i + 1) * r].reshape(-1, r), self._b[name][slot])

    def _batched(self, name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """One token per row, rows grouped: each run of rows against its own adapter by batched
        products, ``[runs, m, in] @ A_s^T -> [runs, m, r] @ B_s -> [runs, m, out]``, added to ``out``.

        Why, for decode steps: the masked product does K times the LoRA work, which on a CPU is
        compute-bound (about 21 of a 145 ms step at K=16, 128 rows, Gemma 3 270M, against about
        14 ms this way, measured in bench/); on a GPU it is one kernel per layer either way.
        Runs of unequal length are padded to the longest (padded rows are dropped after).
        """
        plan = self._plan
        assert plan is not None
        g, i = self._group_of[name]

        def compute() -> list[torch.Tensor]:  # each sibling's [runs, m, r] columns
            a3 = self._stack(("a", g), self._a[g], plan).transpose(1, 2)
            flat = x.reshape(-1, x.shape[-1])
            rows = flat if plan.pad is None else flat.index_select(0, plan.pad)
            low = torch.bmm(rows.to(self.dtype).view(plan.n, plan.m, -1), a3)
            return list(low.split(self.rank, dim=-1))

        low_i, b3 = self._once(g, x, compute)[i], self._stack(("b", name), self._b[name], plan)
        if plan.unpad is None:
            out.view(plan.n, plan.m, -1).baddbmm_(low_i, b3)
        else:
            out.view(-1, out.shape[-1]).add_(torch.bmm(low_i, b3).view(plan.n * plan.m, -1).index_select(0, plan.unpad))

    def _stack(self, key: tuple[str, Any], stack: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """``stack`` [slots, ..] cut to the plan's runs: a view when their slots are consecutive,
        else a copy; made once per batch layout."""
        got = self._picked.get(key)
        if got is None:
            got = stack[plan.span] if plan.span is not None else stack.index_select(0, plan.slots)
            self._picked[key] = got
        return got

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            if self._slots is None:
                return None  # not inside rows(): behave as the bare base model
            x = args[0]
            if torch.is_grad_enabled() or out.dtype != self.dtype or not out.is_contiguous():
                return out + nn.functional.linear(self._masked(name, x), self._b[name].flatten(0, 1).t()).to(out.dtype)
            # inference: add the product into the layer's fresh output in place
            tokens = x.shape[1] if x.dim() == 3 else 1
            if tokens == 1 and self._plan is not None:
                self._batched(name, x, out)
            elif tokens > 1 and self._runs is not None:
                self._segmented(name, x, out)
            else:
                low = self._masked(name, x)
                out.view(-1, out.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), self._b[name].flatten(0, 1))
            return out

        return hook

    # -- rows ----------------------------------------------------------------------------------
    @contextmanager
    def rows(self, slots: Sequence[int]) -> Iterator[None]:
        """Within this block, batch row i of every forward pass uses adapter slot ``slots[i]``.

        Rows grouped by slot (each slot's rows next to each other) let passes compute each
        adapter's product on its own rows only (see the class docstring).
        """
        bad = [s for s in slots if not 0 <= s < len(self.adapters)]
        if bad:
            raise ValueError(f"slot {bad[0]} is not one of the {len(self.adapters)} slots (0 .. {len(self.adapters) - 1})")
        self._set(torch.tensor(list(slots), dtype=torch.long, device=self.device))
        try:
            yield
        finally:
            self._slots = self._runs = self._plan = None
            self._forget()

    def keep(self, rows: torch.Tensor) -> None:
        """Inside :meth:`rows`: the batch now holds only these rows of it (finished rows left)."""
        assert self._slots is not None
        self._set(self._slots[rows.to(self._slots.device)])

    def _set(self, slots: torch.Tensor) -> None:
        self._slots = slots
        self._runs = _runs(slots.tolist())
        self._plan = _plan(self._runs, len(slots), self.device)
        self._forget()

    def _forget(self) -> None:
        """Drop what was computed for the previous rows (masks, low-rank products, selections)."""
        self._mask = None
        self._low = {}
        self._picked = {}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> StackedLora:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_adapter(path: str, modules: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An adapter folder's layers: name -> (A [r, in], B * scale [out, r]), in float32."""
    cfg = adapter_config(path)
    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    names = {k[len(_PREFIX) : -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")}
    out = {}
    for name in sorted(names):
        lin = modules.get(name)
        if type(lin) is not nn.Linear:
            raise ValueError(f"{path}: adapter weights for {name}, which is not a linear layer of this model")
        a = weights[f"{_PREFIX}{name}.lora_A.weight"]
        b = weights[f"{_PREFIX}{name}.lora_B.weight"]
        r = a.shape[0]
        if a.shape[1] != lin.in_features or b.shape != (lin.out_features, r):
            raise ValueError(f"{path}: {name} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit {lin}")
        alpha = float(cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[name] = (a.float(), b.float() * scale)
    return out


def _runs(slots: Sequence[int]) -> list[tuple[int, int, int]] | None:
    """(slot, first row, end row) of each run of equal slots, or None when some slot's rows are
    not all in one run (rows not grouped by adapter)."""
    runs: list[tuple[int, int, int]] = []
    for i, slot in enumerate(slots):
        if runs and runs[-1][0] == slot:
            runs[-1] = (slot, runs[-1][1], i + 1)
        else:
            runs.append((slot, i, i + 1))
    return runs if len({r[0] for r in runs}) == len(runs) else None


def _plan(runs: list[tuple[int, int, int]] | None, rows: int, device: torch.device) -> _Plan | None:
    """The padded layout of these runs for batched products, or None when rows are not grouped
    or padding would more than double the rows (many short runs beside a long one)."""
    if runs is None:
        return None
    n, m = len(runs), max(b - a for _, a, b in runs)
    if n * m > 2 * rows:
        return None
    slots = [s for s, _, _ in runs]
    span = slice(slots[0], slots[0] + n) if slots == list(range(slots[0], slots[0] + n)) else None
    pad = unpad = None
    if any(b - a != m for _, a, b in runs):
        pad = torch.tensor([a + min(j, b - a - 1) for _, a, b in runs for j in range(m)], device=device)
        unpad = torch.tensor([k * m + j for k, (_, a, b) in enumerate(runs) for j in range(b - a)], device=device)
    return _Plan(torch.tensor(slots, device=device), n, m, span, pad, unpad)
