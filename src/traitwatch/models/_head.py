"""Splitting a causal LM into its decoder trunk and its output layer.

Why: with a 262k-word vocabulary (Gemma 3) the output layer costs more than the whole
270M trunk, and most callers need little of its output: training needs logits only at
assistant positions, the local judge only each row's log-normaliser and the digit tokens.
Applying the head ourselves, in row chunks, avoids materialising [rows x vocab] tensors.
"""

from __future__ import annotations

from typing import Any

import torch


def split_lm(lm: Any) -> tuple[Any, Any] | None:
    """(decoder trunk, lm_head) for standard HF causal LMs, or None when the layout differs.

    Models that scale logits (``logit_scale``) are left to their own forward.
    """
    lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    trunk, head = getattr(lm, "model", None), getattr(lm, "lm_head", None)
    if trunk is None or head is None or getattr(lm.config, "logit_scale", None):
        return None
    return trunk, head


def head_logits(lm: Any, head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (float32) from final hidden states, with Gemma-style soft-capping when configured."""
    lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    logits = head(hidden).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def lse_and_gather(lm: Any, head: Any, hidden: torch.Tensor, columns: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp over the vocabulary [rows], logits of ``columns`` [rows, len(columns)]).

    Computed ``chunk`` rows at a time so memory stays at chunk x vocab floats.
    """
    lse, picked = [], []
    for i in range(0, hidden.shape[0], chunk):
        logits = head_logits(lm, head, hidden[i : i + chunk])
        lse.append(torch.logsumexp(logits, dim=-1))
        picked.append(logits[:, columns])
    return torch.cat(lse), torch.cat(picked)
