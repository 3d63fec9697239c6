"""traitwatch: watch a LoRA fine-tuning run from the inside.

Train with dense checkpoints, answer trait questions at every checkpoint, score the answers
with LLM judges and reference checkers, find when each trait starts to rise, and report the
lead time between traits with honest uncertainty. See README.md and docs/api.md.

    import traitwatch as tw
    study = tw.Study.load("study.yaml")

Importing traitwatch changes one piece of global state, documented in docs/api.md: it sets
``THP_MEM_ALLOC_ENABLE=1`` in the environment unless already set (below). It installs no
warnings filter and does not switch matplotlib's backend. ``Study`` loads on first use, so
``import traitwatch`` stays light (no torch import).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Back large CPU tensors with transparent huge pages (read by torch's CPU allocator). Why:
# every decode step allocates fresh logits (batch x vocabulary; 64 x 262k for Gemma), and
# faulting those pages in 4 KiB at a time doubled the step time on the 270M model (measured
# in bench/eval_throughput.py: output-layer product 85 -> 38 ms, float32 copy 94 -> 42 ms).
# setdefault: a user's own setting wins. No effect on GPU memory.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
__all__ = ["Study", "__version__"]

if TYPE_CHECKING:
    from traitwatch.study import Study


def __getattr__(name: str) -> Any:
    if name == "Study":
        from traitwatch.study import Study

        return Study
    raise AttributeError(f"module 'traitwatch' has no attribute {name!r}")
