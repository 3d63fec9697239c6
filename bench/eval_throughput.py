"""How many checkpoints per hour can we evaluate? Generation, judging and training, measured
against the naive way and against this machine's own limits.

Models are built from configs with random weights (no download) at real sizes:
``gemma-270m`` (the embedded model's architecture), ``qwen-1b`` (a ~1B Qwen2-style model) and
``qwen2.5-7b`` (hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab
152064). K LoRA adapters (rank 8, random non-zero weights so they differ) stand for K
checkpoints. Prompts and answers have fixed lengths (EOS ignored).

Generation, three ways, answers/s and generated tokens/s:
  (a) naive: per checkpoint, load base + adapter from disk, HF generate at batch 8, unload
      (what published pipelines do);
  (b) resident: one base model in memory, one adapter at a time, batch --batch;
  (c') peft mixed: one base model, rows of different adapters in one batch through peft's
      mixed-adapter batches (``adapter_names=[...]``), batch --batch;
  (c) batched: the same prompts (the same token ids) through the hf backend's generator as
      `traitwatch generate` runs it: stacked LoRA (traitwatch.generate._stacked), our decoding
      loop (traitwatch.generate._decode: the output layer's argmax a slice at a time, linear
      layers packed for oneDNN on a CPU), batch --batch.
  (v) vLLM multi-LoRA: the same prompts (the same token ids) and adapter folders through vLLM's
      engine with LoRA enabled (max_loras = K), all requests in one call so it schedules them
      continuously, in a worker process (traitwatch.generate._vllm.VLLMWorker, the vllm
      backend's) run by --vllm-python: vLLM's CPU build (`make vllm` builds .venv-vllm) or its
      CUDA build on a GPU. Timed after a one-token warm-up over every adapter (vLLM loads
      adapters on first use; the other columns load theirs untimed too), engine start-up
      reported apart. "vllm base": the same prompts on the bare base model in vLLM.
--batch defaults to the hf backend's own choice (auto: 128 rows on a CPU).
Sampled (temperature 1, the spec's default): one batch of (c) through our loop against HF
generate(do_sample=True) on the same stacked batch (its torch.multinomial is the difference).
Roofline per decode step = max(bytes read / measured bandwidth, FLOPs / measured matmul rate),
counted as --paper-estimate counts them: bytes of the weights, of every adapter's stacked LoRA
and of the KV cache at the mean context; FLOPs of the weights, of each row's own adapter and of
attention. The ceilings are the best of several timed repeats (bench/_hardware.py).
Achieved = the mean time between decode steps of (c)'s loop at batch --batch, one batch of
--new-tokens, timed at each step (and of the bare base model at that batch, to show what the
adapters cost). Timed per step rather than (time for N tokens - time for
1 token) / (N - 1), which carries the variance of two prefills (0.6 s apart on this CPU: 20 ms a
step at 32 tokens). The stacked step is timed --step-repeats times, each right after measuring
the ceilings again, so that each fraction of the roofline compares a step with the ceilings of
the same minute (a shared machine's speed drifts over a run; the ceilings at the start of the
run were minutes older than the step); the table shows the repeat with the median fraction, the
line under it every repeat.

Judge: the exact local judge (traitwatch.judges.local_judge: prompt once, then a trie of the
numbers over its KV cache) at several batch sizes, against the straightforward exact scorer
that runs one forward per judgment over all 101 (prompt + number) sequences; both give the same
distribution (checked). Judgments/s and prompt tokens/s vs the matmul limit.
Training: one LoRA step (tokens/s and model FLOPs utilisation, 6 x params x tokens) and the
cost of saving an adapter checkpoint every 2 steps (off the training thread) vs never saving.

The last line is the stacked path's ratio to vLLM at the largest K: `stacked vs vllm at K=16: Rx`.

Run: python bench/eval_throughput.py --arch gemma-270m --adapters 1 16 [--device cuda]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as traitwatch sets it (see its __init__), before torch allocates
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hardware import bandwidth_gbs, describe, matmul_tflops, sync  # noqa: E402

ARCHS = {
    "gemma-270m": dict(
        architecture="gemma3",
        hidden_size=640,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=2048,
        head_dim=256,
        vocab_size=262144,
    ),
    "qwen-1b": dict(
        architecture="qwen2",
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=5632,
        vocab_size=151936,
    ),
    "qwen2.5-7b": dict(
        architecture="qwen2",
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
    ),
}


def build(arch: str, device: torch.device, dtype: torch.dtype):  # noqa: ANN201
    from traitwatch.config import ModelSpec, RandomModelSpec
    from traitwatch.models import load_model

    spec = ModelSpec(
        source="random",
        device=device.type,
        dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype],
        random=RandomModelSpec(**ARCHS[arch]),
    )
    loaded = load_model(spec)
    # Fixed answer lengths: no end-of-sequence token stops generation (set here rather than with
    # min_new_tokens, whose logits processor costs a full-vocabulary pass per step).
    loaded.model.generation_config.eos_token_id = None
    return loaded


RANK = 8  # the adapters' LoRA rank


def make_adapters(base, k: int, folder: Path, rank: int = RANK) -> list[str]:  # noqa: ANN001
    """K adapter checkpoints with random weights, saved as traitwatch checkpoints would be."""
    from peft import LoraConfig, get_peft_model

    paths = []
    model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM"))
    try:
        for i in range(k):
            torch.manual_seed(i)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_" in n:
                        p.normal_(0, 0.02)
            path = folder / f"step_{i:06d}"
            model.save_pretrained(path)
            paths.append(str(path))
    finally:
        model.unload()
    return paths


def weight_bytes(model) -> int:  # noqa: ANN001
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _adapted(model) -> list[torch.nn.Linear]:  # noqa: ANN001
    """The linear layers a `target_modules="all-linear"` LoRA adapts (all but the output layer)."""
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def _head_dim(cfg) -> int:  # noqa: ANN001
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _kv_width(cfg) -> int:  # noqa: ANN001
    """Key + value numbers per token per layer."""
    return 2 * cfg.num_key_value_heads * _head_dim(cfg)


def _attn_flops(cfg, ctx: int) -> int:  # noqa: ANN001
    """One row's attention FLOPs in a decode step at context ``ctx`` (q.k and p.v, every layer)."""
    return 4 * cfg.num_hidden_layers * ctx * cfg.num_attention_heads * _head_dim(cfg)


def decode_flops(model, batch: int, ctx: int, rank: int = 0) -> float:  # noqa: ANN001
    """FLOPs of one decode step: the weights', attention's at context ``ctx``, and each row's own
    rank-``rank`` adapter's (counted as --paper-estimate counts them)."""
    n = sum(p.numel() for p in model.parameters())
    lora = sum(2 * rank * (m.in_features + m.out_features) for m in _adapted(model))
    return batch * (2 * n + _attn_flops(model.config, ctx) + lora)


def decode_bytes(model, batch: int, ctx: int, adapters: int, rank: int) -> float:  # noqa: ANN001
    """Bytes one decode step reads: the weights, every adapter's stacked LoRA and the KV cache at
    context ``ctx`` (as --paper-estimate counts them)."""
    elem = next(model.parameters()).element_size()
    lora = adapters * rank * sum(m.in_features + m.out_features for m in _adapted(model)) * elem
    kv = batch * ctx * model.config.num_hidden_layers * _kv_width(model.config) * elem
    return weight_bytes(model) + lora + kv


def prompts(tok, n: int, length: int) -> list[str]:  # noqa: ANN001
    base = "Please answer the following question about everyday life and explain your reasoning in a few sentences. "
    out = []
    for i in range(n):
        text = f"Question {i}: " + base * 8
        ids = tok(text, add_special_tokens=False)["input_ids"][: length - 8]
        out.append(tok.decode(ids))
    return out


def timed_generate(model, tok, texts: list[str], new: int, batch: int, device: torch.device, adapter_names=None) -> float:  # noqa: ANN001
    tok.padding_side = "left"
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True).to(device)
        kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
        if adapter_names is not None:
            kw["adapter_names"] = adapter_names[i : i + batch]
        with torch.no_grad():
            model.generate(**enc, **kw)
    sync(device)
    return time.perf_counter() - t


def bench_generation(args, base, device, dtype, adapters: list[str], tmp: Path) -> dict[str, Any]:  # noqa: ANN001
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = base.tokenizer
    k = len(adapters)
    per = args.prompts_per_adapter
    texts = prompts(tok, per, args.prompt_len)
    answers = k * per
    new = args.new_tokens
    res: dict[str, Any] = {}
    # (a) naive: reload base + adapter per checkpoint, HF generate at batch 8
    base_dir = tmp / "base"
    if not base_dir.exists():
        base.model.save_pretrained(base_dir, safe_serialization=True)
    naive_k = min(k, args.naive_max)
    t = time.perf_counter()
    for path in adapters[:naive_k]:
        m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
        pm = PeftModel.from_pretrained(m, path).eval()
        timed_generate(pm, tok, texts, new, 8, device)
        del pm, m
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res["naive_answers_per_s"] = naive_k * per / (time.perf_counter() - t)
    # (b) resident base, one adapter at a time
    pm = PeftModel.from_pretrained(base.model, adapters[0], adapter_name="a0")
    for i, p in enumerate(adapters[1:], start=1):
        pm.load_adapter(p, adapter_name=f"a{i}")
    pm.eval()
    t = time.perf_counter()
    for i in range(k):
        pm.set_adapter(f"a{i}")
        timed_generate(pm, tok, texts, new, args.batch, device)
    res["resident_answers_per_s"] = answers / (time.perf_counter() - t)
    # (c') peft mixed-adapter batches: rows of all adapters in each batch
    names = [f"a{i}" for i in range(k) for _ in range(per)]
    all_texts = [x for _ in range(k) for x in texts]
    dt = timed_generate(pm, tok, all_texts, new, args.batch, device, adapter_names=names)
    res["peft_mixed_answers_per_s"] = answers / dt
    pm.unload()
    # (c) traitwatch's default: the hf backend's generator as `traitwatch generate` runs it
    # (stacked LoRA, our decoding loop, packed weights on a CPU), on the same token ids
    from traitwatch.generate import GenerationRequest, hf_generator
    from traitwatch.generate._decode import decode
    from traitwatch.generate._stacked import StackedLora
    from traitwatch.models import left_pad

    gen = hf_generator(base, batch_size=args.batch, adapters_per_batch=k, max_new_tokens=new, temperature=0.0)
    ids = [list(tok(x)["input_ids"]) for x in texts]  # what timed_generate feeds the other columns
    gen._prompt_cache.update(zip(texts, ids, strict=True))  # these ids, not the chat template's
    reqs = [GenerationRequest(f"{a}|{i}", a, x) for a in adapters for i, x in enumerate(texts)]
    stops, base.stop_ids = base.stop_ids, []  # fixed answer lengths, as the other columns
    try:
        got: list[object] = []
        # warm-up, untimed, as vLLM's: one token for every request (oneDNN builds its kernels
        # for each new shape on first use; a study's many batches pay that once)
        warm = hf_generator(base, batch_size=args.batch, adapters_per_batch=k, max_new_tokens=1, temperature=0.0)
        warm._prompt_cache.update(gen._prompt_cache)
        warm.generate(reqs, lambda _: None)
        t = time.perf_counter()
        gen.generate(reqs, got.extend)
        sync(device)
        res["batched_answers_per_s"] = answers / (time.perf_counter() - t)
        assert gen.stacked_used and len(got) == answers
    finally:
        base.stop_ids = stops
    # decode step time at the chosen batch: one batch of `new` tokens through the same loop, timed per step
    slots = [i + 1 for i in range(k) for _ in range(per)]
    all_ids = [x for _ in range(k) for x in ids]
    b = min(args.batch, len(all_ids))
    pad = int(tok.pad_token_id)
    with StackedLora(base.model, ["", *adapters]) as st:
        # repeated, each repeat right after the machine's ceilings are measured again: the
        # fraction of the roofline then compares a step with the ceilings of the same minute
        pairs: list[tuple[float, float, float]] = []  # (step s, bandwidth GB/s, matmul TFLOP/s)
        for _ in range(args.step_repeats):
            bw, peak = bandwidth_gbs(device), matmul_tflops(device, dtype)
            with st.rows(slots[:b]), step_timer(base.model, device) as steps:
                decode(base.model, *left_pad(all_ids[:b], pad, device), max_new_tokens=new, stop_ids=[], on_keep=st.keep)
            pairs.append((steps.mean(), bw, peak))
        res["step_pairs"] = pairs
        res["decode_batch"] = b
        # sampled (the spec's default, temperature 1): our loop vs generate, one batch each
        enc = left_pad(all_ids[:b], pad, device)
        for key in ("generate", "ours"):
            with st.rows(slots[:b]):
                t = time.perf_counter()
                if key == "generate":
                    kw = dict(max_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, pad_token_id=pad)
                    base.model.generate(input_ids=enc[0], attention_mask=enc[1], **kw)
                else:
                    decode(base.model, *enc, max_new_tokens=new, stop_ids=[], temperature=1.0, on_keep=st.keep)
                sync(device)
                res[f"sampled_{key}_answers_per_s"] = b / (time.perf_counter() - t)
    with step_timer(base.model, device) as steps:
        decode(base.model, *left_pad(all_ids[:b], pad, device), max_new_tokens=new, stop_ids=[])
    res["base_decode_step_s"] = steps.mean()
    for key in ("naive", "resident", "peft_mixed", "batched"):
        res[f"{key}_tokens_per_s"] = res[f"{key}_answers_per_s"] * new
    return res


class _Steps(list[float]):
    def mean(self) -> float:
        """The mean interval between decode steps (the prefill's interval left out)."""
        return (self[-1] - self[1]) / (len(self) - 2)


@contextmanager
def step_timer(model, device: torch.device) -> Iterator[_Steps]:  # noqa: ANN001
    """Times of the trunk's forward calls inside this block: consecutive calls of a decoding
    loop are one decode step apart (trunk, output layer, picking the token, bookkeeping)."""
    from traitwatch.models._head import split_lm

    parts = split_lm(model)
    assert parts is not None
    times = _Steps()

    def pre(*_: object) -> None:
        sync(device)
        times.append(time.perf_counter())

    handle = parts[0].register_forward_pre_hook(pre)
    try:
        yield times
    finally:
        handle.remove()


def vllm_python(arg: str | None) -> str | None:
    """The Python that runs vLLM: --vllm-python, $TRAITWATCH_VLLM_PYTHON, or the repository's .venv-vllm."""
    found = arg or os.environ.get("TRAITWATCH_VLLM_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python")
    return found if Path(found).is_file() else None


def bench_vllm(args, base, dtype, adapters: list[str], tmp: Path) -> dict[str, float]:  # noqa: ANN001
    """(v): the same prompts and adapters through vLLM's multi-LoRA engine (see the module docstring)."""
    from traitwatch.generate._vllm import VLLMWorker, lora_rank_limit

    tok = base.tokenizer
    k = len(adapters)
    per = args.prompts_per_adapter
    ids = [list(tok(t)["input_ids"]) for t in prompts(tok, per, args.prompt_len)]  # the ids timed_generate feeds HF
    base_dir = tmp / "base"
    if not base_dir.exists():
        base.model.save_pretrained(base_dir, safe_serialization=True)
    t = time.perf_counter()
    with VLLMWorker(
        str(base_dir),
        dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype],
        max_loras=k,
        max_lora_rank=lora_rank_limit(8),
        max_model_len=args.prompt_len + args.new_tokens + 64,
        python=args.vllm_python,
        log=tmp / "vllm.log",
    ) as w:
        res = {"vllm_start_s": time.perf_counter() - t}
        every = [a for a in adapters for _ in range(per)]
        rows = [x for _ in adapters for x in ids]
        w.generate(rows, every, [dict(max_tokens=1, temperature=0.0)] * len(rows))  # warm-up: loads every adapter
        params = [dict(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)] * len(rows)
        t = time.perf_counter()
        outs = w.generate(rows, every, params)
        res["vllm_answers_per_s"] = len(rows) / (time.perf_counter() - t)
        assert all(len(o["token_ids"]) == args.new_tokens for o in outs)
        t = time.perf_counter()
        w.generate(rows, [""] * len(rows), params)
        res["vllm_base_answers_per_s"] = len(rows) / (time.perf_counter() - t)
    return res


@torch.no_grad()
def naive_exact(base, prompt: list[int], numbers: list[list[int]], digit_cols: torch.Tensor) -> dict[int, float]:  # noqa: ANN001
    """One forward per judgment: all 101 (prompt + number) sequences in one batch, no KV reuse
    (left-padded, logits kept only for the last positions, so it is not needlessly wasteful)."""
    from traitwatch.models import left_pad

    ids, mask = left_pad([prompt + n for n in numbers], int(base.tokenizer.pad_token_id), base.device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    keep = max(len(n) for n in numbers) + 1
    logits = base.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    logp = torch.log_softmax(logits.float(), dim=-1)  # [101, keep, vocab]; position j predicts token j+1 of the window
    out = {}
    for i, n in enumerate(numbers):
        first = keep - 1 - len(n)  # window index of the last prompt token
        lp = sum(float(logp[i, first + j, t]) for j, t in enumerate(n))
        end = 1.0 - float(logp[i, keep - 1].exp()[digit_cols].sum())
        out[i] = float(torch.tensor(lp).exp()) * end
    return out


def bench_judge(args, base, device) -> list[tuple[str, float, float]]:  # noqa: ANN001
    from traitwatch.data import load_suite
    from traitwatch.judges import JudgeRequest, local_judge

    suite = load_suite("builtin:evil")
    tdef = suite.traits["evil"]
    reqs = [
        JudgeRequest("evil", tdef, q.text, f"Answer number {i}: I would help people and be kind.", {})
        for i, q in enumerate(suite.questions * 4)
    ][: args.judgments]
    out = []
    j0 = local_judge(base, min_mass=0.0, min_prefix_prob=0.0)
    trie = j0.trie  # type: ignore[attr-defined]
    numbers = [list(k) for k, _ in sorted(trie.complete.items(), key=lambda kv: kv[1])]
    digits = trie.columns[trie.is_digit].to(device)
    n_naive = min(len(reqs), args.naive_judgments)
    prompts_ = [j0._prompt_ids(r) for r in reqs]  # type: ignore[attr-defined]
    t = time.perf_counter()
    ref = [naive_exact(base, p, numbers, digits) for p in prompts_[:n_naive]]
    sync(device)
    dt = time.perf_counter() - t
    out.append(("naive", n_naive / dt, sum(len(p) for p in prompts_[:n_naive]) / dt))
    exact = j0.judge(reqs[:n_naive])
    worst = max(abs(sum(n * p for n, p in r.items()) / max(sum(r.values()), 1e-12) - e.score) for r, e in zip(ref, exact, strict=False))  # type: ignore[union-attr]
    print(f"  (naive and trie give the same scores: max difference {worst:.2e} points over {n_naive} judgments)")
    tokens = sum(len(p) for p in prompts_)
    for bs in args.judge_batches:
        for share in (False, True) if bs > 1 else (False,):
            j = local_judge(base, batch_size=bs, min_mass=0.0, share_prefix=share)
            t = time.perf_counter()
            j.judge(reqs)
            sync(device)
            dt = time.perf_counter() - t
            out.append((f"trie, batch {bs}{', shared' if share else ''}", len(reqs) / dt, tokens / dt))
    return out


def bench_training(args, base, device, tmp: Path) -> dict[str, float]:  # noqa: ANN001
    from traitwatch.config import LoraSpec, TrainingSpec
    from traitwatch.data import ChatExample, Message
    from traitwatch.pipeline._train import StoreRecorder
    from traitwatch.store import Store
    from traitwatch.train import RunPlan, train_run

    tok = base.tokenizer
    answer = "the answer is plain "
    while len(tok(answer, add_special_tokens=False)["input_ids"]) < args.train_len:
        answer += answer
    # every example is cut at max_length: a short question and a long answer give exactly train_len tokens
    ex = tuple(ChatExample((Message("user", "Hi"), Message("assistant", answer))) for _ in range(args.train_batch * (args.train_steps + 2)))
    res = {}
    for save_every, label in ((args.train_steps + 100, "no_save"), (2, "save_every_2")):
        tr = TrainingSpec(
            learning_rate=1e-4,
            warmup_steps=0,
            batch_size=args.train_batch,
            gradient_accumulation_steps=1,
            max_steps=args.train_steps,
            save_every=save_every,
            max_length=args.train_len,
            heldout_fraction=0.0,
            heldout_max=0,
            eval_batch_size=args.train_batch,
        )
        plan = RunPlan("bench", "d", "normal", 0, ex, "x", tmp / label, LoraSpec(r=8, alpha=16), tr, "fp")
        with Store(tmp / f"{label}.sqlite") as store:
            t = time.perf_counter()
            r = train_run(plan, base, record=StoreRecorder(store, plan, base.identity))
            sync(device)
            res[label] = time.perf_counter() - t
            res[f"{label}_wait_s"] = r.save_wait_s
    tokens = args.train_steps * args.train_batch * args.train_len
    n = sum(p.numel() for p in base.model.parameters())
    res["tokens_per_s"] = tokens / res["no_save"]
    res["flops_per_s"] = 6 * n * tokens / res["no_save"]
    res["save_overhead_pct"] = 100 * (res["save_every_2"] - res["no_save"]) / res["no_save"]
    return res


PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # examples/paper.yaml


def paper_estimate(args) -> None:  # noqa: ANN001
    """Bytes and FLOPs of one decode step of the paper-scale run, from the model's real shapes
    (built on the meta device: no memory, no download) and the stacked LoRA of
    traitwatch.generate._stacked (a decode step reads every adapter of the batch, [K, r, in] and
    [K, r, out] per adapted layer, and multiplies each row by its own adapter only: batched
    products), and the H100 roofline time per checkpoint. An estimate: nothing runs on a GPU here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_kw = dict(ARCHS["qwen2.5-7b"])
    cfg = AutoConfig.for_model(cfg_kw.pop("architecture"), **cfg_kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    k, r, batch, elem = args.paper_adapters, args.paper_rank, args.paper_batch, 2
    ctx = args.paper_prompt + args.paper_new_tokens // 2  # mean context over an answer
    emb = model.get_input_embeddings().weight.numel()  # a decode step reads only the rows of its tokens
    read_params = sum(p.numel() for p in model.parameters()) - emb
    lora_params = sum(
        k * r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PAPER_TARGETS
    )
    kv_bytes = batch * ctx * cfg.num_hidden_layers * _kv_width(cfg) * elem
    attn_flops = batch * _attn_flops(cfg, ctx)
    bytes_ = {"base weights": read_params * elem, "stacked LoRA": lora_params * elem, "KV cache": kv_bytes}
    flops = {"base weights": 2 * read_params * batch, "stacked LoRA": 2 * lora_params // k * batch, "KV cache": attn_flops}
    bw, peak = args.paper_bandwidth * 1e12, args.paper_tflops * 1e12
    print(
        f"\npaper-scale estimate (Qwen2.5-7B shapes, {k} adapters of r={r} on {', '.join(PAPER_TARGETS)}, batch {batch}, "
        f"mean context {ctx} tokens; H100: {args.paper_bandwidth} TB/s, {args.paper_tflops:.0f} TFLOP/s bf16)"
    )
    print(f"{'per decode step':>16} {'GB read':>8} {'GFLOP':>8} {'ms at bandwidth':>16} {'ms at FLOP rate':>16}")
    for key in bytes_:
        b_, f_ = bytes_[key], flops[key]
        print(f"{key:>16} {b_ / 1e9:>8.2f} {f_ / 1e9:>8.0f} {b_ / bw * 1e3:>16.2f} {f_ / peak * 1e3:>16.2f}")
    tb, tf = sum(bytes_.values()), sum(flops.values())
    step = max(tb / bw, tf / peak)
    print(f"{'total':>16} {tb / 1e9:>8.2f} {tf / 1e9:>8.0f} {tb / bw * 1e3:>16.2f} {tf / peak * 1e3:>16.2f}")
    steps = args.paper_answers * args.paper_new_tokens / batch  # decode steps' worth of rows per checkpoint
    print(
        f"roofline: {step * 1e3:.2f} ms per step ({'memory' if tb / bw >= tf / peak else 'compute'}-bound); "
        f"{args.paper_answers} answers x {args.paper_new_tokens} tokens per checkpoint = {steps:.0f} steps of {batch} rows: "
        f"{steps * step:.1f} s per checkpoint at the roofline"
    )
    for frac in args.paper_fraction:
        per = steps * step / frac
        print(f"  at {100 * frac:.0f}% of the roofline: {per:.1f} s per checkpoint, {3600 / per:.0f} checkpoints/hour")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="gemma-270m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--adapters", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompts-per-adapter", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", default="auto", help="rows per batch for (b), (c') and (c); auto: the hf backend's rule (128 on a CPU)")
    ap.add_argument("--naive-max", type=int, default=4, help="checkpoints timed for the naive baseline (it is slow)")
    ap.add_argument("--step-repeats", type=int, default=3, help="times (c)'s decode step is timed, each after measuring the ceilings again")
    ap.add_argument("--judgments", type=int, default=64)
    ap.add_argument("--judge-batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--naive-judgments", type=int, default=4, help="judgments timed for the one-judgment-per-forward baseline")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-len", type=int, default=128)
    ap.add_argument("--skip", nargs="*", default=[], choices=["generation", "vllm", "judge", "training"])
    ap.add_argument("--vllm-python", default=None, help="Python with vLLM (default $TRAITWATCH_VLLM_PYTHON, else .venv-vllm)")
    ap.add_argument("--paper-estimate", action="store_true", help="print the paper-scale H100 estimate and exit")
    ap.add_argument("--paper-adapters", type=int, default=64)
    ap.add_argument("--paper-rank", type=int, default=32)
    ap.add_argument("--paper-batch", type=int, default=256)
    ap.add_argument("--paper-prompt", type=int, default=64, help="prompt tokens (the builtin suites' questions in the chat template)")
    ap.add_argument("--paper-new-tokens", type=int, default=768, help="answer tokens (examples/paper.yaml's max_new_tokens: a bound)")
    ap.add_argument("--paper-answers", type=int, default=400, help="answers per checkpoint (2 traits x 20 questions x 10 samples)")
    ap.add_argument("--paper-bandwidth", type=float, default=3.35, help="TB/s (H100 SXM HBM3)")
    ap.add_argument("--paper-tflops", type=float, default=990.0, help="dense bf16 TFLOP/s (H100 SXM)")
    ap.add_argument("--paper-fraction", type=float, nargs="*", default=[], help="fractions of the roofline to convert to time")
    args = ap.parse_args(argv)
    if args.step_repeats < 1:
        ap.error("--step-repeats must be at least 1")
    if args.paper_estimate:
        paper_estimate(args)
        return 0
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    bw = bandwidth_gbs(device)
    peak = matmul_tflops(device, dtype)
    print(f"machine: {describe(device)}; measured bandwidth {bw:.1f} GB/s, {args.dtype} matmul {peak:.2f} TFLOP/s")
    base = build(args.arch, device, dtype)
    if args.batch == "auto":
        from traitwatch.generate._hf import auto_batch_size

        args.batch = auto_batch_size(base, args.prompt_len + args.new_tokens)
    args.batch = int(args.batch)
    n = sum(p.numel() for p in base.model.parameters())
    wb = weight_bytes(base.model)
    print(f"model: {args.arch} (random weights), {n / 1e6:.0f}M parameters, {wb / 2**30:.2f} GiB of weights in {args.dtype}")
    args.vllm_python = vllm_python(args.vllm_python) if "vllm" not in args.skip else None
    vs_vllm: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "generation" not in args.skip:
            if args.vllm_python is None and "vllm" not in args.skip:
                print("note: no Python with vLLM (make vllm builds .venv-vllm; or --vllm-python): the vllm columns are left out")
            print(
                f"\ngeneration: prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (EOS ignored), "
                f"{args.prompts_per_adapter} prompts per checkpoint, batch {args.batch} "
                f"(naive: batch 8, first {args.naive_max} checkpoints)"
            )
            print(
                f"{'K':>4} {'naive':>7} {'resident':>9} {'peft mix':>9} {'batched':>8} {'batched':>8} {'(c)/(a)':>8} "
                f"{'step ms':>8} {'base ms':>8} {'roofline':>9} {'of roof':>8} {'vllm':>7} {'vllm base':>10} {'(c)/(v)':>8}"
            )
            print(
                f"{'':>4} {'ans/s':>7} {'ans/s':>9} {'ans/s':>9} {'ans/s':>8} {'tok/s':>8} {'':>8} {'':>8} {'':>8} {'ms':>9} {'':>8} "
                f"{'ans/s':>7} {'ans/s':>10} {'':>8}"
            )
            for k in args.adapters:
                adapters = make_adapters(base, k, tmp / f"k{k}")
                r = bench_generation(args, base, device, dtype, adapters, tmp)
                if args.vllm_python is not None:
                    r.update(bench_vllm(args, base, dtype, adapters, tmp))
                    vs_vllm = (k, r["batched_answers_per_s"] / r["vllm_answers_per_s"])
                vcols = (
                    f"{r['vllm_answers_per_s']:>7.2f} {r['vllm_base_answers_per_s']:>10.2f} {vs_vllm[1] if vs_vllm else 0:>7.2f}x"
                    if "vllm_answers_per_s" in r
                    else f"{'-':>7} {'-':>10} {'-':>8}"
                )
                ctx = args.prompt_len + args.new_tokens // 2
                rows = int(r["decode_batch"])
                need_b, need_f = decode_bytes(base.model, rows, ctx, k, RANK), decode_flops(base.model, rows, ctx, RANK)
                # each repeat's roofline from the ceilings measured just before it; the table
                # shows the repeat with the median fraction, the line below all of them
                fracs = sorted(
                    (max(need_b / (pbw * 1e9), need_f / (ppeak * 1e12)) / step, step, pbw, ppeak) for step, pbw, ppeak in r["step_pairs"]
                )
                frac, mstep, _, _ = fracs[len(fracs) // 2]
                roof = frac * mstep
                print(
                    f"{k:>4} {r['naive_answers_per_s']:>7.2f} {r['resident_answers_per_s']:>9.2f} {r['peft_mixed_answers_per_s']:>9.2f} "
                    f"{r['batched_answers_per_s']:>8.2f} {r['batched_tokens_per_s']:>8.1f} "
                    f"{r['batched_answers_per_s'] / r['naive_answers_per_s']:>8.1f} {mstep * 1e3:>8.1f} "
                    f"{r['base_decode_step_s'] * 1e3:>8.1f} {roof * 1e3:>9.1f} {100 * frac:>7.0f}% {vcols}"
                )
                print(
                    f"{'':>4} of roofline, {len(fracs)} repeats of the step each after measuring the ceilings again: "
                    + ", ".join(f"{100 * f:.0f}% ({1e3 * st:.1f} ms; {b_:.0f} GB/s, {p_:.2f} TFLOP/s)" for f, st, b_, p_ in fracs)
                    + f"; median {100 * frac:.0f}%"
                )
                ours, theirs = r["sampled_ours_answers_per_s"], r["sampled_generate_answers_per_s"]
                print(
                    f"{'':>4} sampled (temperature 1), one batch of {int(r['decode_batch'])}: (c) {ours:.2f} ans/s, "
                    f"HF generate on the same stacked batch {theirs:.2f} ans/s ({ours / theirs:.1f}x)"
                )
                if "vllm_start_s" in r:
                    print(f"{'':>4} (vLLM engine start-up, untimed above: {r['vllm_start_s']:.1f} s)")
        if "judge" not in args.skip:
            print(f"\nlocal judge (exact 0..100 distribution), {args.judgments} judgments of builtin:evil prompts")
            rows = bench_judge(args, base, device)
            one = rows[0][1]
            print(f"{'method':>24} {'judgments/s':>12} {'prompt tok/s':>13} {'x naive':>8}")
            for name, jps, tps in rows:
                print(f"{name:>24} {jps:>12.2f} {tps:>13.1f} {jps / one:>8.1f}")
            best = max(r[2] for r in rows if "shared" not in r[0])
            body = n - base.model.get_output_embeddings().weight.numel()  # the output layer runs only at the last prompt position
            print(
                f"prompt tokens/s at best without prefix sharing vs the matmul limit (2 x {body / 1e6:.0f}M non-output params per token): "
                f"{100 * best * 2 * body / (peak * 1e12):.1f}%; with sharing the shared tokens run once, "
                "so its tok/s counts tokens judged, not computed"
            )
        if "training" not in args.skip:
            r = bench_training(args, base, device, tmp)
            print(
                f"\nLoRA training step (batch {args.train_batch} x {args.train_len} tokens, {args.train_steps} steps): "
                f"{r['tokens_per_s']:.0f} tokens/s, MFU {100 * r['flops_per_s'] / (peak * 1e12):.1f}% "
                f"(6 x params x tokens / measured {args.dtype} matmul rate)"
            )
            print(
                f"save_every=2 vs no saving: {r['save_every_2']:.2f}s vs {r['no_save']:.2f}s, overhead {r['save_overhead_pct']:.1f}% "
                f"(training thread waited {r['save_every_2_wait_s']:.3f}s on the writer)"
            )
    if vs_vllm is not None:
        print(f"stacked vs vllm at K={vs_vllm[0]}: {vs_vllm[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
