"""Chat templates we set explicitly, and what they imply for generation.

Why: the embedded Gemma 3 270M is a base model with no chat template, and the offline test
tokenizer has none either. Templates here build every piece with string concatenation so
Jinja's whitespace rules cannot move a newline. The token that ends an assistant turn is
derived from the template itself (see ``turn_end_ids``), so generation stops where training
taught the model to stop, for any template.
"""

from __future__ import annotations

from typing import Any

GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(sys='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.sys = m['content'] | trim + '\n\n' -%}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' "
    "+ ns.sys + (m['content'] | trim) + '<end_of_turn>\n' }}"
    "{%- set ns.sys = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

NAMED = {"gemma": GEMMA, "chatml": CHATML}


def resolve_template(value: str | None) -> str | None:
    """A named template ('gemma', 'chatml'), a literal Jinja string, or None."""
    if value is None or value == "":
        return None
    return NAMED.get(value, value)


def turn_end_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the eos token plus the template's turn end.

    Found by rendering a conversation whose assistant says a sentinel and tokenizing what
    the template puts right after it.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    sentinel = "SENTINEL_7f3a"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], tokenize=False)
    tail = text.split(sentinel, 1)[1]
    if tail.strip():
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        if tail_ids and int(tail_ids[0]) not in ids:
            ids.append(int(tail_ids[0]))
    return ids
