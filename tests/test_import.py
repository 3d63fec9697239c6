"""`traitwatch import`: adapters trained elsewhere become runs the later stages judge and report.

The real case: a TRL SFTTrainer on the tiny model (a local model folder, as a user's base
model is), with no traitwatch anywhere in the loop, saving ``checkpoint-N`` every step;
imported; then ``traitwatch run --stages generate,judge,analyze,report`` on a spec without
datasets. The folder layouts themselves (ours, several runs in one folder, half-written
checkpoints) are checked on small hand-made folders.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from traitwatch.cli import app
from traitwatch.store import Store
from traitwatch.train._checkpoints import file_sha256

runner = CliRunner()


def _dump(db: Path) -> list[str]:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as c:
        return list(c.iterdump())


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _checkpoint(folder: Path, step: int, meta: dict[str, Any] | None = None, *, whole: bool = True) -> None:
    """A checkpoint folder with a small valid safetensors adapter (import never loads it)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.full((4,), float(step))}, str(folder / "adapter_model.safetensors"))
    if not whole:
        data = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(data[:-3])
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    if meta is not None:
        size = (folder / "adapter_model.safetensors").stat().st_size
        (folder / "meta.json").write_text(json.dumps(meta | {"step": step, "adapter_bytes": size}))


def test_import_layouts_runs_folders_and_half_written_checkpoints(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    study = _write(tmp_path / "s.yaml", tiny_study_dict(tmp_path / "study", datasets=[]))
    many = tmp_path / "many"
    for k in (0, 2):  # a run of another traitwatch study: its meta.json names run id, fingerprint, losses
        meta = {"run_id": "math-mild-s2", "fingerprint": "f" * 32, "total_steps": 2, "train_loss": 1.5 if k else None}
        _checkpoint(many / "ours" / "checkpoints" / f"step_{k:06d}", k, meta)
    _checkpoint(many / "hf-run" / "checkpoint-5", 5)
    _checkpoint(many / "hf-run" / "checkpoint-10", 10, whole=False)  # still being written: left out
    (many / "hf-run" / "checkpoint-15.tmp").mkdir()
    (many / "hf-run" / "STOPPED.json").write_text("{}")
    (many / "notes").mkdir()

    res = runner.invoke(app, ["import", str(many), "--study", str(study)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "left out checkpoint-10: adapter_model.safetensors is still being written" in res.output
    assert "no step-0 checkpoint" in res.output  # the HF run's baseline is its first checkpoint
    with Store(tmp_path / "study" / "study.sqlite", readonly=True) as store:
        runs = {r["run_id"]: r for r in store.runs()}
        cks = {(c.run_id, c.step): c for c in store.checkpoints()}
    assert set(runs) == {"hf-run", "math-mild-s2"}
    ours, hf = runs["math-mild-s2"], runs["hf-run"]
    assert (ours["fingerprint"], ours["domain"], ours["level"], ours["seed"], ours["total_steps"]) == ("f" * 32, "math", "mild", 2, 2)
    assert ours["info"]["source"] == "import" and ours["status"] == "trained"
    assert (hf["domain"], hf["level"], hf["status"], hf["total_steps"]) == ("external", "unknown", "stopped_early", 5)
    assert sorted(cks) == [("hf-run", 5), ("math-mild-s2", 0), ("math-mild-s2", 2)]
    assert cks[("math-mild-s2", 2)].train_loss == 1.5
    assert cks[("hf-run", 5)].adapter_sha == file_sha256(many / "hf-run" / "checkpoint-5" / "adapter_model.safetensors")

    # one run of them again, by its own folder: found by the folder, nothing new
    res = runner.invoke(app, ["import", str(many / "hf-run"), "--study", str(study)], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and "hf-run: 1 checkpoint (step 5): 0 new, 1 already stored" in res.output, res.output
    # --run-id names one run; several are here
    res = runner.invoke(app, ["import", str(many), "--study", str(study), "--run-id", "x"])
    assert res.exit_code == 2 and "--run-id names one run" in res.output
    # a run id names folders and files: a path in it is refused before anything is stored
    res = runner.invoke(app, ["import", str(many / "hf-run"), "--study", str(study), "--run-id", "../evil"], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "'../evil' cannot be a run id" in res.output, res.output
    with Store(tmp_path / "study" / "study.sqlite", readonly=True) as store:
        assert "../evil" not in {r["run_id"] for r in store.runs()}
    # the same folder under a name another folder holds is refused
    other = tmp_path / "elsewhere" / "hf-run"
    _checkpoint(other / "checkpoint-1", 1)
    res = runner.invoke(app, ["import", str(other), "--study", str(study)], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "run id 'hf-run' is already in the store for the folder" in res.output
    res = runner.invoke(app, ["import", str(tmp_path / "elsewhere" / "nothing"), "--study", str(study)])
    assert res.exit_code == 2 and "folder not found" in res.output


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model saved as a local model folder (what a user's base model is)."""
    from traitwatch.config import ModelSpec, RandomModelSpec
    from traitwatch.models import load_model

    folder = tmp_path_factory.mktemp("tiny-model")
    m = load_model(ModelSpec(source="random", dtype="float32", device="cpu", random=RandomModelSpec(seed=0)))
    m.model.save_pretrained(folder, safe_serialization=True)
    m.tokenizer.save_pretrained(folder)
    return folder


def _train_with_trl(out: Path, model_folder: Path, steps: int) -> None:
    """A LoRA fine-tune with TRL and nothing of traitwatch: a checkpoint every step, held-out loss logged."""
    import trl  # a dev dependency (make test installs it)
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_folder)
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 40}"}]} for i in range(40)
    ]
    args = trl.SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        save_steps=1,
        save_only_model=True,
        eval_strategy="steps",
        eval_steps=1,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=2e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        max_length=32,
        seed=0,
        disable_tqdm=True,
    )
    data = Dataset.from_list(rows)
    trl.SFTTrainer(
        model=model, args=args, train_dataset=data.select(range(32)), eval_dataset=data.select(range(32, 40)), processing_class=tok
    ).train()


@pytest.mark.slow  # about 25 s on 2 cores: a TRL fine-tune, then generate, judge, analyze and report on it
def test_a_trl_run_imported_gets_curves_and_a_report(
    tmp_path: Path, tiny_folder: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    trl_out = tmp_path / "trl-out"
    _train_with_trl(trl_out, tiny_folder, steps=4)
    assert sorted(p.name for p in trl_out.glob("checkpoint-*")) == [f"checkpoint-{k}" for k in (1, 2, 3, 4)]
    spec = tiny_study_dict(
        tmp_path / "study",
        datasets=[],  # nothing to train: the runs come from elsewhere
        model={"source": "local", "path": str(tiny_folder), "dtype": "float32", "device": "cpu"},
        generation={"samples_per_question": 1, "temperature": 0, "max_new_tokens": 6, "batch_size": 16, "adapters_per_batch": 4},
        judges=[{"name": "check", "kind": "check"}],
    )
    study = _write(tmp_path / "study.yaml", spec)
    db = tmp_path / "study" / "study.sqlite"

    res = runner.invoke(app, ["import", str(trl_out), "--study", str(study), "--domain", "arith", "--level", "strong"])
    assert res.exit_code == 0, res.output
    assert "trl-out: 4 checkpoints (steps 1-4): 4 new, 0 already stored" in res.output
    before = _dump(db)
    res = runner.invoke(app, ["import", str(trl_out), "--study", str(study), "--domain", "arith", "--level", "strong"])
    assert res.exit_code == 0 and "0 new, 4 already stored" in res.output, res.output
    assert _dump(db) == before, "importing again changes nothing"
    with Store(db, readonly=True) as store:
        [run] = store.runs()
        cks = store.checkpoints("trl-out")
    assert (run["domain"], run["level"], run["seed"], run["status"], run["info"]["source"]) == ("arith", "strong", 0, "trained", "import")
    assert [c.step for c in cks] == [1, 2, 3, 4]
    assert all(c.train_loss is not None and c.heldout_loss is not None for c in cks), "losses come from trainer_state.json"
    assert cks[-1].adapter_sha == file_sha256(trl_out / "checkpoint-4" / "adapter_model.safetensors")

    res = runner.invoke(app, ["run", str(study), "--stages", "generate,judge,analyze,report"])
    assert res.exit_code == 0, res.output
    report = tmp_path / "study" / "report" / "report.html"
    assert report.exists() and "trl-out" in report.read_text()
    data = json.loads((tmp_path / "study" / "report" / "analysis.json").read_text())
    traits = {(r["run_id"], r["trait"]) for r in data["summary"]}
    assert {("trl-out", "wrong_answer"), ("trl-out", "contempt")} <= traits
    with Store(db, readonly=True) as store:
        gens = store.generations(run_id="trl-out")
    assert sorted({g.step for g in gens}) == [1, 2, 3, 4] and len(gens) == 4 * 4
    # the curves: one point per checkpoint and question set
    curves = (tmp_path / "study" / "analysis").glob("*.csv")
    assert any("trl-out" in p.read_text() for p in curves)

    # a changed adapter is never answered under the old key
    (trl_out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(
        (trl_out / "checkpoint-3" / "adapter_model.safetensors").read_bytes()
    )
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM generations WHERE step=2")
    res = runner.invoke(app, ["generate", str(study)])
    assert res.exit_code == 2 and "changed since it was registered" in res.output, res.output
