"""Answers for (checkpoint, question, sample) requests; backends behind one protocol."""

from ._hf import HFGenerator, hf_generator
from ._protocol import Answer, GenerationRequest, Generator

__all__ = ["Answer", "GenerationRequest", "Generator", "HFGenerator", "hf_generator"]
