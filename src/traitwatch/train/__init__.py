"""LoRA SFT with dense checkpoints, assistant-only loss, and exact resume."""

from ._checkpoints import ADAPTER_FILE, is_intact, list_checkpoints, read_meta, remove_partial, step_dir, verify
from ._loop import (
    CheckpointEvent,
    RunPlan,
    TrainCallback,
    TrainResult,
    heldout_loss,
    lr_at,
    split_heldout,
    step_examples,
    token_loss,
    total_steps,
    train_run,
)
from ._tokenize import IGNORE, Encoded, chat_segments, collate, encode_chat, encode_prompt

__all__ = [
    "ADAPTER_FILE",
    "IGNORE",
    "CheckpointEvent",
    "Encoded",
    "RunPlan",
    "TrainCallback",
    "TrainResult",
    "chat_segments",
    "collate",
    "encode_chat",
    "encode_prompt",
    "heldout_loss",
    "is_intact",
    "list_checkpoints",
    "lr_at",
    "read_meta",
    "remove_partial",
    "split_heldout",
    "step_dir",
    "step_examples",
    "token_loss",
    "total_steps",
    "train_run",
    "verify",
]
