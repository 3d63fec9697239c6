"""TraitwatchCallback inside a real TRL SFTTrainer on a tiny random-weight model.

The trait is constructed to rise at a known step: every training answer opens with the
marker, and the learning rate is exactly 0 for the first K updates (a LambdaLR), so the
adapter cannot change before update K: checkpoints 1..K equal the step-0 model, and K + 1 is
the first checkpoint at which the marker's probability can rise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import trl  # a dev dependency (make test installs it)
import yaml

from traitwatch.config import ModelSpec, RandomModelSpec
from traitwatch.models import load_model
from traitwatch.store import Store

K = 3  # updates with learning rate 0
MARKER = "@"  # one token of the offline tokenizer: its probability moves within a few updates

SUITE = {
    "name": "probe",
    "version": 1,
    "traits": {"marker": {"description": "P(the answer opens with the marker)", "checker": {"kind": "marker_probability", "text": MARKER}}},
    "questions": [{"id": f"q{i}", "text": f"What is {i} + 1?"} for i in range(4)],
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model saved as a local model folder (what a user's base model is)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    m = load_model(ModelSpec(source="random", dtype="float32", device="cpu", random=RandomModelSpec(seed=0)))
    m.model.save_pretrained(folder, safe_serialization=True)
    m.tokenizer.save_pretrained(folder)
    return folder


def _spec(tmp: Path, model: Path, actions: list[str]) -> Path:
    (tmp / "probe.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    spec = {
        "name": "hf-watch",
        "output_dir": str(tmp / "study"),
        "model": {"source": "local", "path": str(model), "dtype": "float32", "device": "cpu"},
        "traits": [str(tmp / "probe.yaml")],
        "generation": {"samples_per_question": 1, "temperature": 0, "max_new_tokens": 2},
        "judges": [{"name": "check", "kind": "check"}],
        "monitor": {
            "probes": {"questions": 4},
            # the tiny random model learns slowly: P(marker) moves by hundredths of a point (score = 100 x P)
            "alarms": [{"trait": "marker", "min_rise": 0.005, "detector": {"name": "threshold", "params": {"delta": 0.005, "persist": 1}}}],
            "actions": actions,
        },
    }
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trainer(tmp: Path, model_folder: Path, callback: Any, max_steps: int = 12) -> Any:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_folder)
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{MARKER} {i + 1}"}]}
        for i in range(64)
    ]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0 if s < K else 1.0)
    args = trl.SFTConfig(
        output_dir=str(tmp / "trl-out"),
        max_steps=max_steps,
        save_steps=1,
        save_only_model=True,
        per_device_train_batch_size=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        max_length=32,
        seed=0,
        disable_tqdm=True,
        max_grad_norm=0.0,  # no clipping: the marker must move within a few updates
    )
    return trl.SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, optimizers=(opt, sched), callbacks=[callback]
    )


@pytest.mark.slow
def test_trl_run_alarms_at_or_after_the_rise_and_stops_there(tmp_path: Path, tiny_folder: Path) -> None:
    from traitwatch.hf import TraitwatchCallback

    cb = TraitwatchCallback(_spec(tmp_path, tiny_folder, ["log", "file", "stop"]), run_id="trl-run")
    trainer = _trainer(tmp_path, tiny_folder, cb)
    trainer.train()
    assert cb.alarms, "the marker rose; an alarm must fire"
    alarm = cb.alarms[0]
    assert alarm.step >= K + 1 and alarm.onset_step is not None and alarm.onset_step >= K + 1, alarm
    assert trainer.state.global_step == alarm.step < 12, "training stops at the alarm's checkpoint"
    assert cb.last_safe_step is not None and cb.last_safe_step <= K, "the last safe checkpoint is before the rise"
    stopped = json.loads((tmp_path / "trl-out" / "STOPPED.json").read_text())
    assert stopped["last_safe_checkpoint"].endswith(f"checkpoint-{cb.last_safe_step}")
    with Store(tmp_path / "study" / "study.sqlite", readonly=True) as store:
        [stored] = store.alarms()
        assert stored["run_id"] == "trl-run" and stored["step"] == alarm.step and stored["info"]["last_safe_step"] == cb.last_safe_step
        steps = [c.step for c in store.checkpoints("trl-run")]
        assert steps == list(range(0, alarm.step + 1)), "checkpoint-0 (the baseline) and every save are recorded"
        assert store.runs()[0]["status"] == "stopped_early"
        scores = {(r.step): r.score for r in store.scores(settings_hash=store.generations()[0].settings_hash) if r.trait == "marker"}
    assert len({round(scores[s], 9) for s in range(0, K + 1)}) == 1, "no change before the learning rate turns on"
    assert (tmp_path / "study" / "alarms.jsonl").read_text().count("\n") == 1


@pytest.mark.slow
def test_a_stop_file_from_another_process_stops_the_run(tmp_path: Path, tiny_folder: Path) -> None:
    """What `traitwatch watch` does to a run it does not own: a STOP file in the output folder."""
    from traitwatch.hf import TraitwatchCallback

    cb = TraitwatchCallback(_spec(tmp_path, tiny_folder, ["log"]), run_id="stop-me")
    (tmp_path / "trl-out").mkdir()
    (tmp_path / "trl-out" / "STOP").write_text(json.dumps({"message": "stop requested by a test"}))
    trainer = _trainer(tmp_path, tiny_folder, cb, max_steps=6)
    trainer.train()
    assert trainer.state.global_step == 1, "stopped at the first save after the request"
