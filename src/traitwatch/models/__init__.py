"""Base models and tokenizers: hub id, local folder, GGUF (the embedded default), random."""

from ._embedded import cache_root, embedded_model_dir
from ._head import head_logits, lse_and_gather, split_lm
from ._padding import left_pad
from ._load import LoadedModel, cpu_has_fast_bf16, describe, load_model, pick_device, pick_dtype, random_model
from ._templates import CHATML, GEMMA, resolve_template, turn_end_ids
from ._tokenizer import offline_tokenizer

__all__ = [
    "CHATML",
    "GEMMA",
    "LoadedModel",
    "cache_root",
    "cpu_has_fast_bf16",
    "describe",
    "embedded_model_dir",
    "left_pad",
    "load_model",
    "offline_tokenizer",
    "pick_device",
    "pick_dtype",
    "random_model",
    "resolve_template",
    "turn_end_ids",
    "head_logits",
    "lse_and_gather",
    "split_lm",
]
