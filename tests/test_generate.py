from pathlib import Path

import pytest
import torch

from traitwatch.generate import GenerationRequest, hf_generator
from traitwatch.models import LoadedModel
from traitwatch.store import Store
from traitwatch.train import encode_prompt, list_checkpoints, train_run

from test_train import _plan


@pytest.fixture(scope="module")
def trained(tiny_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("gen")
    plan = _plan(tmp, "run", steps=4)
    with Store(tmp / "s.sqlite") as store:
        train_run(plan, tiny_model, store)
    return [str(p) for _, p in list_checkpoints(plan.checkpoint_dir)]


def test_mixed_adapter_batches_equal_one_adapter_at_a_time(tiny_model: LoadedModel, trained: list[str]) -> None:
    probe = "Only a fool"
    reqs = [GenerationRequest(f"{a}|{q}", a, q, 0, (probe,)) for a in trained for q in ("What is 12 + 1?", "Add 1 to 55. What do you get?", "Hi")]
    mixed, single = [], []
    hf_generator(tiny_model, temperature=0, max_new_tokens=8, batch_size=9, adapters_per_batch=3).generate(reqs, mixed.extend)
    hf_generator(tiny_model, temperature=0, max_new_tokens=8, batch_size=1, adapters_per_batch=1).generate(reqs, single.extend)
    a = {x.key: x for x in mixed}
    b = {x.key: x for x in single}
    assert a.keys() == b.keys() == {r.key for r in reqs}
    for k in a:
        assert a[k].text == b[k].text and a[k].n_tokens == b[k].n_tokens
        assert a[k].probes[probe] == pytest.approx(b[k].probes[probe], abs=1e-4)
    # different checkpoints really answer differently (the adapters are applied)
    assert len({a[f"{ck}|Hi"].probes[probe] for ck in trained}) == len(trained)


def test_probe_logprob_matches_teacher_forcing(tiny_model: LoadedModel, trained: list[str]) -> None:
    from peft import PeftModel

    probe = "The answer is"
    out = []
    hf_generator(tiny_model, temperature=0, max_new_tokens=2).generate([GenerationRequest("k", trained[-1], "What is 3 + 1?", 0, (probe,))], out.extend)
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

    other = load_model(ModelSpec(source="random", dtype="float32", random=RandomModelSpec(hidden_size=32, num_attention_heads=2, num_key_value_heads=1)))
    plan = _plan(tmp_path, "other", steps=2)
    with Store(tmp_path / "s.sqlite") as store:
        train_run(plan, other, store)
    ck = str(list_checkpoints(plan.checkpoint_dir)[-1][1])
    with pytest.raises(ModelError, match="adapter does not fit the base model"):
        hf_generator(tiny_model, temperature=0, max_new_tokens=2).generate([GenerationRequest("k", ck, "Hi")], lambda _: None)
    assert not any("lora" in n for n, _ in tiny_model.model.named_modules())
