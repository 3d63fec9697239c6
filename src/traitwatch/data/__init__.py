"""Chat datasets, trait suites, and the offline demo data generator."""

from ._chat import ChatDataset, ChatExample, Message, load_chat_jsonl, write_chat_jsonl
from ._datasets import dataset_path, load_level
from ._demo import MARKER, demo_conversations, probe_numbers, write_demo_dataset
from ._suites import (
    CheckerSpec,
    QuestionDef,
    Suite,
    SuiteFile,
    TraitDef,
    builtin_suite_names,
    fill_rubric,
    load_suite,
    rubric_hash,
)

__all__ = [
    "MARKER",
    "ChatDataset",
    "ChatExample",
    "CheckerSpec",
    "Message",
    "QuestionDef",
    "Suite",
    "SuiteFile",
    "TraitDef",
    "builtin_suite_names",
    "dataset_path",
    "demo_conversations",
    "fill_rubric",
    "load_chat_jsonl",
    "load_level",
    "load_suite",
    "probe_numbers",
    "rubric_hash",
    "write_chat_jsonl",
    "write_demo_dataset",
]
