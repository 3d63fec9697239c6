"""Training the same LoRA two ways in one run: traitwatch's loop against TRL's ``SFTTrainer``.

Both train the same random-weight model (``--arch``, as bench/eval_throughput.py builds it, in
``--dtype``), the same LoRA (rank 8, alpha 16, every linear layer of the blocks, fp32 adapter
weights as peft makes them), on the same examples (traitwatch's tokenization: every example is
exactly ``--seq-len`` tokens), with the same batch, steps, AdamW, learning rate (constant, no
warm-up) and gradient clipping (1.0); TRL gets the token ids and the assistant-token mask as a
pre-tokenized dataset (``input_ids``, ``completion_mask``), so neither side tokenizes in the
timed part differently. Each trains twice: never saving, and saving the adapter every 2 steps
(TRL: ``save_steps=2``, ``save_only_model=True``; traitwatch: ``save_every: 2``, its
checkpoints with meta and sha256, the two latest with optimizer state, written off the training
thread, recorded in a study store as ``traitwatch train`` does).

Timed: traitwatch's whole ``train_run`` (tokenization and LoRA attach included) and TRL's
``trainer.train()`` (its set-up not timed), each best of ``--repeats``, after one untimed
warm-up run of each. Printed: tokens/s (optimizer steps x batch x seq-len / seconds) without and
with saving, save overhead (with / without - 1), and last ``traitwatch vs trl (save every 2): Rx``
(TRL's time with saving over traitwatch's: above 1 is faster).

Run: python bench/train_throughput.py --arch gemma-270m --steps 8 --batch 4 --seq-len 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as traitwatch sets it (see its __init__), before torch allocates
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hardware import describe  # noqa: E402
from eval_throughput import ARCHS, build  # noqa: E402


def examples(base, n: int, seq_len: int):  # noqa: ANN001, ANN201
    """n chat examples that traitwatch's tokenization cuts to exactly seq_len tokens."""
    from traitwatch.data import ChatExample, Message

    answer = "the answer is plain "
    while len(base.tokenizer(answer, add_special_tokens=False)["input_ids"]) < seq_len:
        answer += answer
    return tuple(ChatExample((Message("user", f"Question {i}?"), Message("assistant", answer))) for i in range(n))


def run_traitwatch(args, base, data, folder: Path, save_every: int) -> float:  # noqa: ANN001
    from traitwatch.config import LoraSpec, TrainingSpec
    from traitwatch.pipeline._train import StoreRecorder
    from traitwatch.store import Store
    from traitwatch.train import RunPlan, train_run

    tr = TrainingSpec(
        learning_rate=1e-4,
        lr_scheduler="constant",
        warmup_steps=0,
        batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        save_every=save_every,
        max_length=args.seq_len,
        heldout_fraction=0.0,
        heldout_max=0,
        max_grad_norm=1.0,
    )
    plan = RunPlan("bench", "d", "normal", 0, data, "x", folder / "run", LoraSpec(r=8, alpha=16), tr, "fp")
    with Store(folder / "study.sqlite") as store:
        t = time.perf_counter()
        train_run(plan, base, record=StoreRecorder(store, plan, base.identity))
        return time.perf_counter() - t


def run_trl(args, base, data, folder: Path, save_every: int | None) -> float:  # noqa: ANN001
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from traitwatch.train._tokenize import IGNORE, encode_chat

    hf_logging.set_verbosity_error()
    enc = [encode_chat(base.tokenizer, ex, args.seq_len) for ex in data]
    ds = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": [int(x != IGNORE) for x in e.labels]} for e in enc])
    model = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    try:
        cfg = SFTConfig(
            output_dir=str(folder / "trl"),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            weight_decay=0.0,
            save_strategy="no" if save_every is None else "steps",
            save_steps=save_every or 500,
            save_only_model=True,
            logging_strategy="no",
            report_to=[],
            use_cpu=base.device.type == "cpu",
            bf16=False,  # the model already is in --dtype; autocast would add casts traitwatch does not do
            max_length=args.seq_len,
            completion_only_loss=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=base.tokenizer)
        t = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t
        if save_every is not None:
            saved = sorted((folder / "trl").glob("checkpoint-*"))
            assert len(saved) == args.steps // save_every, saved
        return dt
    finally:
        model.unload()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="gemma-270m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    import trl

    print(f"machine: {describe(device)}; trl {trl.__version__}, torch {torch.__version__}")
    base = build(args.arch, device, getattr(torch, args.dtype))
    print(
        f"model: {args.arch} (random weights) in {args.dtype}, LoRA r=8 on every linear layer; "
        f"{args.steps} steps x batch {args.batch} x {args.seq_len} tokens"
    )
    data = examples(base, args.batch * (args.steps + 2), args.seq_len)
    tokens = args.steps * args.batch * args.seq_len
    times: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            return tmp / str(n)

        run_traitwatch(args, base, data, fresh(), args.steps + 100)  # warm-up
        run_trl(args, base, data, fresh(), None)
        for _ in range(args.repeats):
            for save, tw_every, trl_every in (("no save", args.steps + 100, None), ("save every 2", 2, 2)):
                for who, fn, every in (("traitwatch", run_traitwatch, tw_every), ("trl", run_trl, trl_every)):
                    dt = fn(args, base, data, fresh(), every)  # type: ignore[operator]
                    times[(who, save)] = min(dt, times.get((who, save), float("inf")))
    print(f"{'trainer':>11} {'no save s':>10} {'tok/s':>8} {'save/2 s':>9} {'tok/s':>8} {'save overhead':>14}")
    for who in ("traitwatch", "trl"):
        a, b = times[(who, "no save")], times[(who, "save every 2")]
        print(f"{who:>11} {a:>10.2f} {tokens / a:>8.0f} {b:>9.2f} {tokens / b:>8.0f} {100 * (b / a - 1):>13.1f}%")
    print(f"traitwatch vs trl (save every 2): {times[('trl', 'save every 2')] / times[('traitwatch', 'save every 2')]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
