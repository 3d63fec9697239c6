"""Answers for (checkpoint, question, sample) requests; backends behind one protocol."""

from ._hf import HFGenerator, hf_generator
from ._protocol import Answer, GenerationRequest, Generator
from ._stacked import StackedLora, can_stack
from ._vllm import VLLMGenerator, vllm_available, vllm_generator

__all__ = [
    "Answer",
    "GenerationRequest",
    "Generator",
    "HFGenerator",
    "StackedLora",
    "VLLMGenerator",
    "can_stack",
    "hf_generator",
    "vllm_available",
    "vllm_generator",
]
