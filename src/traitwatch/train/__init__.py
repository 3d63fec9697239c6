"""LoRA SFT with dense checkpoints, assistant-only loss, and exact resume.

``train_run`` trains one run and reports what it wrote as events; ``TrainCallback`` is the
plug-in point for live monitors. Tests and benchmarks import the private modules directly.
"""

from ._checkpoints import ADAPTER_FILE, file_sha256, verify
from ._loop import (
    CheckpointDropped,
    CheckpointEvent,
    CheckpointSaved,
    RunFinished,
    RunPlan,
    RunStarted,
    TrainCallback,
    TrainEvent,
    TrainResult,
    check_optimizer,
    split_heldout,
    total_steps,
    train_run,
)
from ._tokenize import encode_prompt

__all__ = [
    "ADAPTER_FILE",
    "CheckpointDropped",
    "CheckpointEvent",
    "CheckpointSaved",
    "RunFinished",
    "RunPlan",
    "RunStarted",
    "TrainCallback",
    "TrainEvent",
    "TrainResult",
    "check_optimizer",
    "encode_prompt",
    "file_sha256",
    "split_heldout",
    "total_steps",
    "train_run",
    "verify",
]
