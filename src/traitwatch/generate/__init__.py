"""Answers for (checkpoint, question, sample) requests; backends behind one protocol."""

from ._hf import hf_generator
from ._protocol import Answer, GenerationRequest, Generator
from ._vllm import vllm_available, vllm_generator

__all__ = [
    "Answer",
    "GenerationRequest",
    "Generator",
    "hf_generator",
    "vllm_available",
    "vllm_generator",
]
