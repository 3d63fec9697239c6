"""traitwatch: watch a LoRA fine-tuning run from the inside.

Train with dense checkpoints, answer trait questions at every checkpoint, score the answers
with LLM judges and reference checkers, find when each trait starts to rise, and report the
lead time between traits with honest uncertainty. See README.md and docs/.
"""

__version__ = "0.1.0"
