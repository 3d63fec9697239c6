"""Base models and tokenizers: hub id, local folder, GGUF (the embedded default), random."""

from ._head import head_logits, lse_and_gather, split_lm
from ._load import LoadedModel, describe, load_model
from ._padding import left_pad

__all__ = [
    "LoadedModel",
    "describe",
    "left_pad",
    "load_model",
    "head_logits",
    "lse_and_gather",
    "split_lm",
]
