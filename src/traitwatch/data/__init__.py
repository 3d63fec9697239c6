"""Chat datasets, trait suites, and the offline demo data generator."""

from ._chat import ChatExample, Message, load_chat_jsonl
from ._datasets import load_level
from ._suites import Suite, TraitDef, builtin_suite_names, fill_rubric, load_suite, rubric_hash

__all__ = [
    "ChatExample",
    "Message",
    "Suite",
    "TraitDef",
    "builtin_suite_names",
    "fill_rubric",
    "load_chat_jsonl",
    "load_level",
    "load_suite",
    "rubric_hash",
]
