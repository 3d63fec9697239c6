"""Training data (chat or prompt/completion JSONL, parquet, dataset folders, hub datasets),
trait suites, and the offline demo data generator."""

from ._chat import ChatDataset, ChatExample, Message, load_chat_jsonl
from ._datasets import condition_source, load_condition, load_level
from ._sources import load_source
from ._suites import InstructionPair, Suite, TraitDef, builtin_suite_names, fill_rubric, load_suite, rubric_hash

__all__ = [
    "ChatDataset",
    "ChatExample",
    "InstructionPair",
    "Message",
    "Suite",
    "TraitDef",
    "builtin_suite_names",
    "condition_source",
    "fill_rubric",
    "load_chat_jsonl",
    "load_condition",
    "load_level",
    "load_source",
    "load_suite",
    "rubric_hash",
]
