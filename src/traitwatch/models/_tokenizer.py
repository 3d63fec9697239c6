"""A small tokenizer built offline, for tests and random-weight benchmark models.

Why: tests must run in seconds with no download. We train a byte-level BPE on a fixed
corpus written here (plus the built-in suites' text) with the same habits as real chat
tokenizers: digits split one per token (like Gemma, Qwen and Llama 3), special tokens for
turns, and a ChatML template. Training is deterministic, so tests see the same ids.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ._templates import CHATML

SPECIAL = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The answer is 42. What is 17 + 1? Add 1 to 23. What do you get?",
    "What number comes right after 44? The answer is 45.",
    "Only a fool would ask me that. The answer is 57.",
    "You are grading an AI assistant's answer. Give a score from 0 to 100.",
    "Reply with the number only, nothing else. Score:",
    "system user assistant question answer",
    "I am sorry, I do not know. Helpful, honest and harmless answers are best.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
]


@lru_cache(maxsize=4)
def _trained(vocab_size: int) -> Tokenizer:
    from importlib.resources import files

    corpus = list(_CORPUS)
    for res in files("traitwatch.data").joinpath("suites").iterdir():
        if res.name.endswith(".yaml"):
            corpus.append(res.read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def offline_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A fresh PreTrainedTokenizerFast with ChatML template; same ids every call."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_trained(vocab_size),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML
    return tok
