"""Left-padding token rows into one batch.

Why left: generation and scoring read the last position of every row, so rows end together.
Shared by the generator and the local judge.
"""

from __future__ import annotations

import torch


def left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both ``[len(rows), longest]`` on ``device``; padding masked out."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)
