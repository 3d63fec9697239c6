"""traitwatch.generate._decode (our decoding loop) and traitwatch.models._packed (oneDNN-packed
linear layers): the same tokens as transformers' ``generate``, on real (tiny, random) models."""

from __future__ import annotations

import inspect

import pytest
import torch

from traitwatch.config import ModelSpec, RandomModelSpec
from traitwatch.generate._decode import categorical, decode, first_equal, greedy_pick, row_max, top_p_filter
from traitwatch.models import LoadedModel, left_pad, load_model
from traitwatch.models._packed import PackedHead, can_pack, packed_linears


def _varied(architecture: str, dtype: str) -> LoadedModel:
    """A tiny random model whose weights are scaled up so that greedy answers vary from token
    to token and row to row (at the usual 0.02 init the tiny Qwen2 repeats one token forever,
    and no row would stop before another)."""
    model = load_model(ModelSpec(source="random", dtype=dtype, device="cpu", random=RandomModelSpec(seed=3, architecture=architecture)))
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def bf16_model() -> LoadedModel:
    """bfloat16: the dtype a CPU with fast bf16 runs, where the linear layers can be packed."""
    return _varied("qwen2", "bfloat16")


def _prompts(model: LoadedModel, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tok = model.tokenizer
    texts = [f"Question {i}: " + "what is the sum of the numbers " * (1 + i % 3) for i in range(n)]
    return left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], int(tok.pad_token_id), model.device)


def _generate(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, new: int, stops: list[int], **kw: object) -> list[list[int]]:
    """transformers' generate, cut at the first stop token (the reference)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new, eos_token_id=stops or None, pad_token_id=int(model.tokenizer.pad_token_id), **kw)
    with torch.no_grad():
        out = model.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1] :].tolist()
    cut = []
    for seq in out:
        end = next((i for i, t in enumerate(seq) if t in stops), len(seq))
        cut.append(seq[:end])
    return cut


@pytest.mark.parametrize("architecture,dtype", [("qwen2", "float32"), ("qwen2", "bfloat16"), ("llama", "bfloat16")])
def test_greedy_decode_equals_generate_as_rows_stop_and_leave(architecture: str, dtype: str) -> None:
    model = _varied(architecture, dtype)
    ids, mask = _prompts(model, 12)
    free = decode(model.model, ids, mask, max_new_tokens=10, stop_ids=[])
    assert all(d.finish == "length" and len(d.tokens) == 10 for d in free)
    assert [d.tokens for d in free] == _generate(model, ids, mask, 10, [], do_sample=False)
    # stop tokens that rows emit at different steps: rows finish early and leave the batch
    stops = sorted({free[0].tokens[2], free[5].tokens[6]})
    kept: list[int] = []
    got = decode(model.model, ids, mask, max_new_tokens=10, stop_ids=stops, on_keep=lambda rows: kept.append(len(rows)))
    want = _generate(model, ids, mask, 10, stops, do_sample=False)
    assert [d.tokens for d in got] == want
    for d, f in zip(got, free, strict=True):
        # a row stops exactly at its first stop token, else runs to the length limit
        first = next((i for i, t in enumerate(f.tokens) if t in stops), None)
        assert (d.finish, len(d.tokens)) == (("stop", first) if first is not None else ("length", 10))
    assert kept, "no finished row ever left the batch"
    assert kept == sorted(kept, reverse=True) and kept[-1] < 12


def test_categorical_draws_each_word_with_its_probability() -> None:
    """The sampler against the distribution it is given: 100,000 draws, a chi-square test of
    the counts, words of zero probability never drawn (a whole zero block, scattered zeros,
    the last word), a vocabulary that is not a multiple of the block, rows not summing to 1."""
    from scipy.stats import chisquare

    vocab = 3001
    weights = torch.tensor([float(1 + i % 7) for i in range(vocab)], dtype=torch.float32)
    zero = (torch.arange(vocab) % 50 == 0) | ((torch.arange(vocab) >= 128) & (torch.arange(vocab) < 192))
    zero[-1] = True
    weights[zero] = 0.0
    probs = (2.0 * weights / weights.sum()).expand(400, vocab).contiguous()
    gen_counts = torch.zeros(vocab)
    torch.manual_seed(11)
    for _ in range(250):
        drawn = categorical(probs, block=64)
        gen_counts += torch.bincount(drawn, minlength=vocab).float()
    assert gen_counts.sum() == 100_000
    assert gen_counts[zero].sum() == 0
    expected = (weights / weights.sum() * 100_000)[~zero]
    assert chisquare(gen_counts[~zero].numpy(), expected.numpy()).pvalue > 1e-3
    # rows that put all their mass on the first or on the last word
    edge = torch.zeros(2, vocab)
    edge[0, 0] = 1.0
    edge[1, vocab - 2] = 0.5
    assert categorical(edge, block=64).tolist() == [0, vocab - 2]


def test_top_p_filter_keeps_the_nucleus_by_transformers_rule() -> None:
    """The top-p warper's rule (keep a word while the words ranked above it hold less than
    top_p), checked word by word against a float64 brute force on peaked rows (found among 256
    candidates), flatter rows (4,096) and a uniform row whose nucleus is larger (the warper
    itself); and against TopPLogitsWarper, whose float32 sum can misplace a boundary word."""
    from transformers import TopPLogitsWarper

    torch.manual_seed(2)
    vocab = 10_000
    scores = torch.randn(6, vocab) * torch.tensor([[8.0], [4.0], [2.0], [1.0], [0.3], [0.0]])
    probs = torch.softmax(scores, dim=-1).double()
    for top_p in (0.3, 0.9, 0.99):
        got = top_p_filter(scores, top_p)
        kept = torch.isfinite(got)
        above = torch.stack([(probs[r][None, :] * (probs[r][None, :] > probs[r][:, None])).sum(-1) for r in range(5)])
        assert torch.equal(kept[:5], above < top_p), top_p
        want = TopPLogitsWarper(top_p)(None, scores)
        assert (kept[:5] != torch.isfinite(want[:5])).sum() <= 1  # the warper's float32 rounding, at most a word
        # equal words: which ones is arbitrary, and 0.3 = 3,000 x 1e-4 sits on the boundary
        assert abs(int(kept[5].sum()) - int(torch.isfinite(want[5]).sum())) <= 1
        assert torch.equal(got[kept], scores[kept])
    sizes = torch.isfinite(top_p_filter(scores, 0.9)).sum(-1).tolist()
    assert sizes[0] <= 256 < sizes[2] <= 4096 < sizes[3] and sizes[5] == 9000  # every path taken


def test_sampled_decode_is_reproducible_and_keeps_to_the_nucleus(bf16_model: LoadedModel) -> None:
    """Same seed, same samples; another seed, other samples; and with temperature 0.7 and top-p
    0.5 every drawn token lies in the nucleus of the model's next-word distribution there
    (checked by teacher forcing with transformers' own warpers)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    model = bf16_model
    ids, mask = _prompts(model, 6)

    def draw(seed: int, **kw: float) -> list[list[int]]:
        torch.manual_seed(seed)
        return [d.tokens for d in decode(model.model, ids, mask, max_new_tokens=8, stop_ids=[], **kw)]

    assert draw(5, temperature=1.0) == draw(5, temperature=1.0)
    assert draw(5, temperature=1.0) != draw(6, temperature=1.0)
    got = draw(7, temperature=0.7, top_p=0.5)
    full = torch.cat([ids, torch.tensor(got)], dim=1)
    with torch.no_grad():
        logits = model.model(input_ids=full, attention_mask=torch.cat([mask, torch.ones(6, 8, dtype=mask.dtype)], dim=1)).logits
    step = logits[:, ids.shape[1] - 1 : -1].float()  # the distribution each drawn token came from
    for r in range(6):
        scores = TopPLogitsWarper(0.5)(None, TemperatureLogitsWarper(0.7)(None, step[r]))
        allowed = torch.isfinite(scores)
        assert all(bool(allowed[t, tok]) for t, tok in enumerate(got[r])), r
        assert int(allowed.sum(-1).max()) < scores.shape[-1] // 2  # the nucleus really cuts


def test_greedy_pick_keeps_the_first_of_tied_words_across_slices() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 500, bias=False).to(torch.bfloat16)
    hidden = torch.randn(3, 16).to(torch.bfloat16)
    with torch.no_grad():
        head.weight[50] = head.weight[60] = head.weight[300] = hidden[0] * 4  # row 0: ties at 50, 60 (one slice), 300 (another)
        head.weight[420] = hidden[1] * 4  # row 1: a maximum in the last, shorter slice
        want = head(hidden).float().argmax(-1)
        assert want[0] == 50 and want[1] == 420
        for packed in (None, PackedHead(head, 3, chunk=100)):
            got = greedy_pick(None, head, hidden, packed, chunk=100)
            assert got.tolist() == want.tolist()


def test_row_max_reads_bfloat16_bits_as_amax_does() -> None:
    """The bit-pattern maximum equals ``amax`` on the values where the int16 order and the
    float order part ways: both zeros, rows of negative values only, infinities, ties,
    subnormals, across scales."""
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-38, 1e-3, 1.0, 1e3, 1e30):
        x = (torch.randn(64, 300, generator=gen) * scale).to(torch.bfloat16)
        x[torch.rand(64, 300, generator=gen) < 0.2] = 0.0
        x[torch.rand(64, 300, generator=gen) < 0.2] = -0.0
        negative = torch.rand(64, generator=gen) < 0.4
        x[negative] = -x[negative].abs()  # rows below zero only (some of them -0.0 at most)
        x[0] = -0.0  # a row of -0.0 only
        x[1] = float("-inf")
        x[2, 7] = float("inf")
        x[3, :] = x[3, 5]  # all tied
        x[4] = -x[4].abs()
        x[4, 9] = -0.0  # the maximum of a negative row is -0.0
        got, want = row_max(x), x.amax(-1)
        assert negative.any() and got.dtype == torch.bfloat16
        assert torch.equal(got, want), scale
        assert torch.equal(got.float().signbit(), want.float().signbit()), scale  # -0.0 stays -0.0
    y = torch.randn(5, 40, generator=gen)  # other dtypes: amax itself
    assert torch.equal(row_max(y), y.amax(-1))


def test_first_equal_finds_the_first_position_as_the_float_compare_does() -> None:
    """The bit compare of bfloat16 finds what the float compare finds, zeros of both signs too
    (a row whose maximum is +0 with a -0 before it: the -0 is the first maximum, as argmax says)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 500, generator=gen).to(torch.bfloat16)
    x[:, 100:110] = x[:, 100:101]  # ties: the first one wins
    x[5] = -x[5].abs()
    x[5, 40], x[5, 60] = -0.0, 0.0  # maximum zero: -0 first
    x[6] = -x[6].abs()
    x[6, 70] = -0.0  # maximum -0 alone
    top = row_max(x)  # as greedy_pick gets it: +0 for row 5
    want = x.float().argmax(-1)
    assert want[5] == 40 and want[6] == 70 and not top[5].float().signbit() and top[6].float().signbit()
    assert first_equal(x, top).tolist() == want.tolist()
    assert first_equal(x[:5], top[:5]).tolist() == want[:5].tolist()  # no zero maximum: the bit compare
    assert first_equal(x.float(), top.float()).tolist() == want.tolist()


def test_greedy_pick_equals_argmax_on_slices_below_zero() -> None:
    """Rows whose logits are all negative in some slices, or in all of them (the bit-pattern
    maximum's other branch), pick the first maximum as ``argmax`` does, packed or not."""
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 1000, bias=False).to(torch.bfloat16)
    hidden = torch.randn(6, 16).abs().to(torch.bfloat16) + 0.1  # positive inputs
    with torch.no_grad():
        head.weight[:500] = -head.weight[:500].abs() - 1e-3  # words 0-499: logits below zero in every row
        head.weight[700] = head.weight[701]  # a tie
        for flip in (False, True):
            if flip:  # now every logit of every row is below zero
                head.weight.data = -head.weight.abs() - 1e-3
            logits = head(hidden)
            assert bool((logits[:, :500] < 0).all()) and bool((logits < 0).all()) is flip
            want = logits.float().argmax(-1)
            for packed in (None, PackedHead(head, 6, chunk=250)):
                assert greedy_pick(None, head, hidden, packed, chunk=250).tolist() == want.tolist(), (flip, packed)


@pytest.mark.skipif(not can_pack(torch.nn.Linear(4, 4).to(torch.bfloat16)), reason="no oneDNN packed linear in this torch build")
def test_packed_linears_are_exact_and_leave_the_model_unchanged(bf16_model: LoadedModel) -> None:
    model = bf16_model.model
    ids, mask = _prompts(bf16_model, 4)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with packed_linears(model, 4) as packed:
            assert packed
            assert any("forward" in vars(m) for m in model.modules())
            got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, plain)
    assert not any("forward" in vars(m) for m in model.modules())
    with packed_linears(model, 4) as packed:  # under autograd: not packed
        assert not packed


def test_gemma3_with_soft_capped_logits_decodes_as_generate() -> None:
    """Gemma 3 (the embedded model's architecture: sliding-window layers, our CPU attention) with
    the output soft-capping Gemma 2 uses: the cap is applied as the model's own forward does."""
    model = _varied("gemma3", "bfloat16")
    model.model.config.final_logit_softcapping = 3.0  # small, so that capping changes which logits tie
    ids, mask = _prompts(model, 8)
    got = decode(model.model, ids, mask, max_new_tokens=6, stop_ids=[])
    assert [d.tokens for d in got] == _generate(model, ids, mask, 6, [], do_sample=False)


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3"])
def test_reserved_cache_gives_what_dynamic_cache_gives(architecture: str) -> None:
    """Step by step, the same hidden states (bit for bit) as transformers' DynamicCache: through
    a prefill, rows leaving the batch, the reserved room running out (full layers) and the
    context outgrowing a sliding window (Gemma 3's sliding layers)."""
    from transformers import DynamicCache

    from traitwatch.generate._kvcache import reserved_cache

    model = _varied(architecture, "bfloat16")
    if architecture == "gemma3":
        model.model.config.sliding_window = 40
    trunk = model.model.model
    ids, mask = _prompts(model, 6)
    assert ids.shape[1] < 39  # the prompt fits the window; the answer outgrows it
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    caches = [DynamicCache(config=trunk.config), reserved_cache(trunk.config, 20)]
    assert all(type(layer).__name__ in ("Full", "Sliding") for layer in caches[1].layers)

    key = "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"

    def step(tokens: torch.Tensor) -> None:
        a, b = (
            trunk(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True, **{key: c}).last_hidden_state for c in caches
        )
        assert torch.equal(a, b)

    step(ids)
    assert all(getattr(layer, "_buf_k", None) is not None for layer in caches[1].layers)  # the reserved path is in use
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        if i == 10:
            keep = torch.tensor([0, 2, 3, 5])
            for c in caches:
                c.batch_select_indices(keep)
            mask, pos = mask[keep], pos[keep]
        step(torch.randint(3, 400, (mask.shape[0], 1), generator=gen))
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == ids.shape[1] + 40
    assert all(getattr(layer, "_buf_k", None) is None for layer in caches[1].layers)  # out of room / window: transformers' update
