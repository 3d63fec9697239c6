from pathlib import Path

import pytest
import torch

from test_train import _plan, _train
from traitwatch.generate import GenerationRequest, hf_generator
from traitwatch.models import LoadedModel
from traitwatch.store import Store
from traitwatch.train import encode_prompt
from traitwatch.train._checkpoints import list_checkpoints


@pytest.fixture(scope="module")
def trained(tiny_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("gen")
    plan = _plan(tmp, "run", steps=4)
    with Store(tmp / "s.sqlite") as store:
        _train(plan, tiny_model, store)
    return [str(p) for _, p in list_checkpoints(plan.checkpoint_dir)]


@pytest.mark.parametrize("lora", ["stacked", "peft"])
def test_mixed_adapter_batches_equal_one_adapter_at_a_time(tiny_model: LoadedModel, trained: list[str], lora: str) -> None:
    probe = "Only a fool"
    # "" is the bare base model, mixed into the same batches as the checkpoints
    reqs = [
        GenerationRequest(f"{a}|{q}", a, q, 0, (probe,))
        for a in ["", *trained]
        for q in ("What is 12 + 1?", "Add 1 to 55. What do you get?", "Hi")
    ]
    mixed, single = [], []
    gen = hf_generator(tiny_model, temperature=0, max_new_tokens=8, batch_size=9, adapters_per_batch=3, lora=lora)
    gen.generate(reqs, mixed.extend)
    assert gen.stacked_used is (lora == "stacked")
    hf_generator(tiny_model, temperature=0, max_new_tokens=8, batch_size=1, adapters_per_batch=1, lora="peft").generate(reqs, single.extend)
    assert not any("lora" in n for n, _ in tiny_model.model.named_modules())
    # stacked hooks removed (transformers adds its own output-capturing hooks once hidden states are asked for)
    ours = [h for m in tiny_model.model.modules() for h in m._forward_hooks.values() if "StackedLora" in getattr(h, "__qualname__", "")]
    assert not ours
    a = {x.key: x for x in mixed}
    b = {x.key: x for x in single}
    assert a.keys() == b.keys() == {r.key for r in reqs}
    for k in a:
        assert a[k].text == b[k].text and a[k].n_tokens == b[k].n_tokens
        assert a[k].probes[probe] == pytest.approx(b[k].probes[probe], abs=1e-4)
    # different checkpoints really answer differently (the adapters are applied)
    # (step 0 is the untouched base: its B matrices are zero, so it answers as the bare base "")
    assert a[f"{trained[0]}|Hi"].probes[probe] == pytest.approx(a["|Hi"].probes[probe], abs=1e-5)
    assert len({round(a[f"{ck}|Hi"].probes[probe], 4) for ck in trained}) == len(trained)


def test_stacked_lora_equals_peft_logits_with_rslora_and_mixed_ranks(tiny_model: LoadedModel, tmp_path: Path) -> None:
    """The stacked sum equals peft's per-adapter output, row by row, for different ranks,
    alphas and rank-stabilised scaling; adapters that cannot be stacked are named with a reason."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from traitwatch.generate._stacked import StackedLora, can_stack

    paths = []
    for i, (r, alpha, rs, targets) in enumerate(
        [(4, 8, False, "all-linear"), (2, 16, True, ["q_proj", "v_proj"]), (8, 3, False, ["down_proj"])]
    ):
        m = get_peft_model(tiny_model.model, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs, target_modules=targets))
        torch.manual_seed(i)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.3)
        m.save_pretrained(tmp_path / f"a{i}")
        m.unload()
        paths.append(str(tmp_path / f"a{i}"))
    ids = torch.tensor([[5, 9, 14, 3, 7, 2]] * 4)
    with torch.no_grad(), StackedLora(tiny_model.model, ["", *paths]) as st:
        with st.rows([0, 1, 2, 3]):
            got = tiny_model.model(ids).logits  # several tokens per row: per-adapter products
            got1 = tiny_model.model(ids[:, :1]).logits  # one token per row: batched products
            assert st._plan is not None and all(isinstance(v[1], list) for v in st._low.values())
        with st.rows([3, 1, 0, 2, 1]):  # rows in any order: the masked product
            got_mixed = tiny_model.model(ids[[0, 1, 2, 3, 0]]).logits
        base = tiny_model.model(ids).logits  # outside rows(): the bare base model
    want, want1 = [base[0]], [base[0, :1]]
    for i, path in enumerate(paths, start=1):
        pm = PeftModel.from_pretrained(tiny_model.model, path)
        with torch.no_grad():
            want.append(pm(ids[i : i + 1]).logits[0])
            want1.append(pm(ids[i : i + 1, :1]).logits[0])
        pm.unload()
    for i in range(4):
        assert torch.allclose(got[i], want[i], atol=1e-4), i
        assert torch.allclose(got1[i], want1[i], atol=1e-4), i
    for row, slot in enumerate([3, 1, 0, 2, 1]):
        assert torch.allclose(got_mixed[row], want[slot], atol=1e-4), row
    assert not torch.allclose(want[1], want[0], atol=1e-3)  # the adapters change the output
    m = get_peft_model(tiny_model.model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    m.save_pretrained(tmp_path / "dora")
    m.unload()
    assert "use_dora" in (can_stack(tiny_model.model, [str(tmp_path / "dora")]) or "")


def test_stacked_prefill_per_adapter_rows_equals_masked_product(tiny_model: LoadedModel, trained: list[str]) -> None:
    """Rows grouped by adapter take the per-adapter products in passes of several tokens; the
    same rows in a mixed order take the masked stacked product: the same logits row by row."""
    from traitwatch.generate._stacked import StackedLora

    torch.manual_seed(0)
    ids = torch.randint(3, 400, (6, 7))
    ids[2] = ids[0]  # rows 0 and 2: the same tokens, adapters 1 and 2
    grouped = [1, 1, 2, 2, 3, 0]
    mixed = [2, 1, 0, 3, 1, 2]
    perm = [2, 0, 5, 4, 1, 3]  # row i of the mixed batch is row perm[i] of the grouped one
    assert [grouped[p] for p in perm] == mixed
    assert len(trained) == 3  # steps 0, 2, 4
    with torch.no_grad(), StackedLora(tiny_model.model, ["", *trained[1:], trained[0]]) as st:
        with pytest.raises(ValueError, match="slot 4"), st.rows([0, 4]):
            pass
        with st.rows(grouped):
            assert st._runs is not None
            a = tiny_model.model(ids).logits
            assert any(isinstance(v[1], dict) for v in st._low.values())  # the per-adapter path ran
        with st.rows(mixed):
            assert st._runs is None
            b = tiny_model.model(ids[perm]).logits
            assert st._low and not any(isinstance(v[1], dict) for v in st._low.values())
    assert torch.allclose(a[perm], b, atol=1e-5)
    assert not torch.allclose(a[0], a[2], atol=1e-3)  # the adapters really differ


@pytest.mark.parametrize(
    "grouped",
    [
        [1, 1, 2, 2, 3, 3],  # equal runs of consecutive slots: views of the stacks
        [3, 3, 1, 1, 1, 0],  # unequal runs, slots out of order, the bare slot: padded, stacks selected
        [3, 3, 3, 3, 0, 1, 2],  # one long run beside short ones: padding would double the rows, masked product
    ],
)
def test_stacked_decode_step_batched_products_equal_masked_product(tiny_model: LoadedModel, trained: list[str], grouped: list[int]) -> None:
    """One token per row with rows grouped by adapter takes the batched per-adapter products
    (padded when runs differ in length); the same rows in another order the masked product:
    the same logits row by row."""
    from traitwatch.generate._stacked import StackedLora

    torch.manual_seed(1)
    ids = torch.randint(3, 400, (len(grouped), 1))
    perm = [5, 2, 0, 4, 1, 3, 6][: len(grouped)]
    mixed = [grouped[p] for p in perm]
    with torch.no_grad(), StackedLora(tiny_model.model, ["", *trained[1:], trained[0]]) as st:
        with st.rows(grouped):
            plan = st._plan
            a = tiny_model.model(ids).logits
            assert st._low and all(isinstance(v[1], list) is (plan is not None) for v in st._low.values())  # batched or masked
        with st.rows(mixed):
            assert st._plan is None
            b = tiny_model.model(ids[perm]).logits
        bare = tiny_model.model(ids).logits
    if len(grouped) == 7:
        assert plan is None  # 4 runs x 4 rows > 2 x 7 rows: not worth padding
    else:
        assert plan is not None and (plan.pad is None) == (grouped[0] == 1) and (plan.span is None) == (grouped[0] == 3)
    assert torch.allclose(a[perm], b, atol=1e-5)
    for row, slot in enumerate(grouped):  # the bare slot and step 0 (B = 0) answer as the base model
        assert torch.allclose(a[row], bare[row], atol=1e-5) is (slot in (0, 3)), row


def test_probe_logprob_matches_teacher_forcing(tiny_model: LoadedModel, trained: list[str]) -> None:
    from peft import PeftModel

    probe = "The answer is"
    out = []
    hf_generator(tiny_model, temperature=0, max_new_tokens=2).generate(
        [GenerationRequest("k", trained[-1], "What is 3 + 1?", 0, (probe,))], out.extend
    )
    tok = tiny_model.tokenizer
    ids = encode_prompt(tok, "What is 3 + 1?")
    pid = tok(probe, add_special_tokens=False)["input_ids"]
    model = PeftModel.from_pretrained(tiny_model.model, trained[-1])
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids + pid])).logits[0].float(), -1)
    finally:
        model.unload()
    expected = sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(pid))
    assert out[0].probes[probe] == pytest.approx(expected, abs=1e-4)


def test_sampling_gives_answers_for_every_request(tiny_model: LoadedModel, trained: list[str]) -> None:
    reqs = [GenerationRequest(f"{s}", trained[1], "What is 12 + 1?", s) for s in range(5)]
    out = []
    hf_generator(tiny_model, temperature=1.0, max_new_tokens=5, seed=1).generate(reqs, out.extend)
    assert sorted(a.key for a in out) == [str(s) for s in range(5)]
    assert all(a.finish in ("stop", "length") and 0 <= a.n_tokens <= 5 for a in out)


def test_adapter_from_another_base_is_rejected(tiny_model: LoadedModel, tmp_path: Path) -> None:
    from traitwatch.config import ModelSpec, RandomModelSpec
    from traitwatch.errors import ModelError
    from traitwatch.models import load_model

    other = load_model(
        ModelSpec(source="random", dtype="float32", random=RandomModelSpec(hidden_size=32, num_attention_heads=2, num_key_value_heads=1))
    )
    plan = _plan(tmp_path, "other", steps=2)
    with Store(tmp_path / "s.sqlite") as store:
        _train(plan, other, store)
    ck = str(list_checkpoints(plan.checkpoint_dir)[-1][1])
    with pytest.raises(ModelError, match="adapter does not fit the base model"):
        hf_generator(tiny_model, temperature=0, max_new_tokens=2).generate([GenerationRequest("k", ck, "Hi")], lambda _: None)
    assert not any("lora" in n for n, _ in tiny_model.model.named_modules())


def test_auto_batch_size_on_cpu(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from traitwatch.generate._hf import auto_batch_size

    assert auto_batch_size(tiny_model, 512) == 128
    out = []
    gen = hf_generator(tiny_model, temperature=0, max_new_tokens=2, batch_size="auto")
    gen.generate([GenerationRequest(str(i), "", "Hi") for i in range(3)], out.append)
    assert gen._batch == 128 and len(out) == 1 and len(out[0]) == 3  # one call for all three rows
    # where a quarter of the free memory holds fewer rows, fewer (a power of two)
    import traitwatch.generate._hf as hf

    per_row = 2 * 2 * 2 * 16 * 512 * 4 + 3 * 4 * tiny_model.model.config.vocab_size  # the tiny model's KV + logits per row
    monkeypatch.setattr(hf, "_free_bytes", lambda: 4 * 20 * per_row)
    assert auto_batch_size(tiny_model, 512) == 16
    monkeypatch.setattr(hf, "_free_bytes", lambda: 0)  # unknown: the CPU default
    assert auto_batch_size(tiny_model, 512) == 128


def test_unstackable_adapters_fall_back_to_peft_with_a_note(tiny_model: LoadedModel, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(tiny_model.model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    m.save_pretrained(tmp_path / "dora")
    m.unload()
    out = []
    gen = hf_generator(tiny_model, temperature=0, max_new_tokens=3)
    gen.generate([GenerationRequest("k", str(tmp_path / "dora"), "Hi")], out.extend)
    assert len(out) == 1 and not gen.stacked_used and gen._told_fallback
    assert not any("lora" in n for n, _ in tiny_model.model.named_modules())


def test_adapters_are_attached_by_rank_then_path(tmp_path: Path) -> None:
    """Chunks of one rank: the stacked LoRA pads a chunk's adapters to its largest rank."""
    import json

    from traitwatch.generate._hf import adapter_configs, adapter_order

    paths = {}
    for name, r in [("b/step_2", 64), ("a/step_2", 8), ("b/step_1", 64), ("a/step_1", 8)]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r}))
        paths[name] = str(tmp_path / name)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    order = adapter_order(adapter_configs([paths["b/step_2"], "", paths["a/step_2"], str(broken), paths["b/step_1"], paths["a/step_1"]]))
    assert order == ["", str(broken), paths["a/step_1"], paths["a/step_2"], paths["b/step_1"], paths["b/step_2"]]
    # one rank: the same order as sorting by path
    same = [paths["a/step_2"], paths["a/step_1"]]
    assert adapter_order(adapter_configs(same)) == sorted(same)
