"""The study grid's model and learning-rate axes: run ids, fingerprints, the spec's rules, the
optimizer options, and a whole study over two tiny random-weight models and two learning rates."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tiny import TINY, tiny_study_dict, write_study
from traitwatch.cli import app
from traitwatch.config import StudySpec, TrainingSpec, load_study
from traitwatch.errors import ConfigError, TraitwatchError
from traitwatch.pipeline import StudyContext, run_stages
from traitwatch.pipeline._plan import check_run_globs, grid_cells, model_of_run, plan_runs, planned_run_ids
from traitwatch.store import Store, content_key
from traitwatch.train._loop import make_optimizer

#: A second tiny model: another width, so its adapters cannot be confused with the first's.
WIDE: dict[str, Any] = {**TINY, "random": {"architecture": "qwen2", "seed": 1, "hidden_size": 96, "intermediate_size": 160}}


def _spec(tmp_path: Path, **overrides: object) -> StudySpec:
    """The tiny study; with ``models``, without the helper's ``model`` (the first model is it)."""
    d = tiny_study_dict(tmp_path / "out", **overrides)
    if "models" in overrides:
        d.pop("model")
    return load_study(write_study(tmp_path / "s.yaml", d))


def test_one_model_one_rate_keeps_run_ids_and_fingerprints(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert planned_run_ids(spec) == ["arith-normal-s0", "arith-strong-s0"]
    plans = plan_runs(spec, "ident")
    # the fingerprint as it was computed before the axes existed (optimizer not yet a setting)
    eval_only = {"heldout_eval_max", "eval_batch_size"}
    for p in plans:
        old_training = {k: v for k, v in spec.training.model_dump(mode="json").items() if k not in eval_only | {"optimizer"}}
        assert p.fingerprint == content_key("run-v1", "ident", p.dataset_sha, spec.lora.model_dump(), old_training, p.seed)
        assert p.model_name == "" and p.training.learning_rate == spec.training.learning_rate
    # the same study written with one-entry models / learning_rates lists plans the same runs
    same = _spec(tmp_path / "b", model=None, models=[{"name": "tiny", **TINY}], learning_rates=[spec.training.learning_rate]).model_copy(
        update={"output_dir": spec.output_dir}
    )
    assert [(p.run_id, p.fingerprint) for p in plan_runs(same, {"tiny": "ident"})] == [(p.run_id, p.fingerprint) for p in plans]


def test_models_and_rates_make_the_grid(tmp_path: Path) -> None:
    spec = _spec(tmp_path, models=[{"name": "small", **TINY}, {"name": "wide", **WIDE}], learning_rates=[5e-3, 2e-2])
    ids = planned_run_ids(spec)
    assert len(ids) == 2 * 2 * 2 and len(set(ids)) == 8
    assert "small-arith-normal-s0-lr0.005" in ids and "wide-arith-strong-s0-lr0.02" in ids
    assert spec.model == spec.models[0].plain()  # the first model is the study's model
    plans = plan_runs(spec, {"small": "a", "wide": "b"})
    by_id = {p.run_id: p for p in plans}
    assert by_id["wide-arith-strong-s0-lr0.02"].training.learning_rate == 2e-2
    assert by_id["wide-arith-strong-s0-lr0.02"].model_name == "wide"
    assert model_of_run(spec, "wide-arith-normal-s0-lr0.005") == "wide"
    # a different model or rate is a different run: all fingerprints differ
    assert len({p.fingerprint for p in plans}) == 8
    assert check_run_globs(spec, ["wide-*"]) == ("wide-*",)
    with pytest.raises(ConfigError, match="matches no run"):
        check_run_globs(spec, ["arith-*"])
    # a worker plans its own model's runs only
    assert {p.model_name for p in plan_runs(spec, {"wide": "b"})} == {"wide"}
    assert [c.lr_part for c in grid_cells(spec)] == ["0.005", "0.02", "0.005", "0.02"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": [{"name": "a", **TINY}, {"name": "a", **WIDE}]}, "model names must be unique"),
        ({"models": [{"name": "a", **WIDE}, {"name": "b", **TINY}]}, "differs from the first of 'models'"),
        ({"models": [{"name": "a/b", **TINY}]}, "name"),
        ({"learning_rates": [1e-3, 1e-3]}, "learning_rates must be unique"),
        ({"learning_rates": [0]}, "learning_rates"),
        (
            {"models": [{"name": "a", **TINY}, {"name": "b", **WIDE}], "monitor": {"probes": {"questions": 2}, "alarms": ["wrong_answer"]}},
            "monitor",
        ),
    ],
)
def test_bad_axes_are_one_line_errors(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    d = tiny_study_dict(tmp_path / "out", **overrides)
    if "models" in overrides and overrides["models"][0].get("random") == WIDE["random"]:
        pass  # keeps the helper's `model:` (TINY), which then differs from models[0]
    elif "models" in overrides:
        d.pop("model")
    with pytest.raises(TraitwatchError, match=message):
        load_study(write_study(tmp_path / "s.yaml", d))


def test_optimizer_options(monkeypatch: pytest.MonkeyPatch) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(params, TrainingSpec(weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as where it is not installed
    with pytest.raises(ConfigError, match="training.optimizer: .*bitsandbytes.*Fix: pip install bitsandbytes"):
        make_optimizer(params, TrainingSpec(optimizer="adamw_8bit"))


def test_paper_example_pins_the_published_settings() -> None:
    spec = load_study(Path(__file__).parent.parent / "examples" / "paper.yaml")
    assert spec.training.optimizer == "adamw_8bit" and spec.training.weight_decay == 0.01
    assert any(getattr(j, "model", None) == "gpt-4.1-mini-2025-04-14" for j in spec.judges)


@pytest.mark.slow
def test_two_models_two_rates_end_to_end(tmp_path: Path) -> None:
    """Train, generate, judge and analyse 2 models x 2 rates x 2 levels on the CPU; each run's
    adapters fit its own model, the store records model and rate, the axes tables exist."""
    d = tiny_study_dict(
        tmp_path / "out",
        models=[{"name": "small", **TINY}, {"name": "wide", **WIDE, "attributes": {"size": 2.0}}],
        learning_rates=[5e-3, 2e-2],
    )
    d.pop("model")
    d["training"] |= {"max_steps": 4}
    d["traits"] = [{"suite": "builtin:arithmetic", "questions": 2}]
    d["judges"] = [{"name": "check", "kind": "check"}]
    d["generation"] |= {"samples_per_question": 1}
    d["analysis"] |= {"bootstrap": 20}
    yaml_path = write_study(tmp_path / "grid.yaml", d)
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(yaml_path)])
    assert res.exit_code == 0, res.output
    with Store(tmp_path / "out" / "study.sqlite", readonly=True) as store:
        runs = {r["run_id"]: r for r in store.runs()}
        assert len(runs) == 8
        small, wide = runs["small-arith-strong-s0-lr0.005"], runs["wide-arith-strong-s0-lr0.02"]
        assert (small["info"]["model_name"], small["info"]["learning_rate"]) == ("small", 5e-3)
        assert (wide["info"]["model_name"], wide["info"]["learning_rate"]) == ("wide", 2e-2)
        assert wide["info"]["model_params"] > small["info"]["model_params"] > 0
        assert wide["info"]["model_attributes"] == {"size": 2.0}
        assert small["model"] != wide["model"]  # each run's own base model's identity
        for rid, run in runs.items():
            assert run["info"]["learning_rate"] == (5e-3 if rid.endswith("lr0.005") else 2e-2)
            ck = store.checkpoints(rid)
            assert [c.step for c in ck] == [0, 2, 4]
            widths = {96, 160} if rid.startswith("wide") else {64, 128}  # (hidden, MLP) of the run's model
            tensors = load_file(str(Path(ck[-1].path) / "adapter_model.safetensors"))
            assert {v.shape[1] for k, v in tensors.items() if "lora_A" in k} == widths  # LoRA A reads its model's widths
            n = store.conn.execute("SELECT COUNT(*) FROM generations WHERE run_id=?", (rid,)).fetchone()[0]
            assert n == 3 * 2  # 3 checkpoints x 2 questions x 1 sample
    res = runner.invoke(app, ["--quiet", "analyze", str(yaml_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    axes = out["axes"]
    assert {r["model"] for r in axes["model_onsets"]} == {"small", "wide"}
    assert {r["learning_rate"] for r in axes["learning_rates"]} == {5e-3, 2e-2}
    assert all(r["note"].startswith("n/a: 2 models") for r in axes["model_correlations"])
    res = runner.invoke(app, ["analyze", str(yaml_path)])  # the tables as printed
    assert res.exit_code == 0, res.output
    for title in ("per model: seeds with an onset", "across models: Pearson r", "per learning rate"):
        assert title in " ".join(res.output.split()), title
    for name in ("model_onsets", "model_correlations", "learning_rates"):
        assert (tmp_path / "out" / "analysis" / f"{name}.csv").exists()
    # run again: nothing is trained or generated twice
    results, _ = run_stages(StudyContext(load_study(yaml_path)), ["train", "generate"])
    counts = {r.name: r.counts for r in results}
    assert counts["train"]["steps_run"] == 0 and counts["generate"]["generated"] == 0


def test_ray_answer_tasks_hold_one_base_model_each() -> None:
    """The Ray driver's blocks of checkpoints never mix runs of two base models (a task loads one)."""
    from traitwatch.generate import GenerationRequest
    from traitwatch.pipeline._ray import _blocks

    todo = [
        (GenerationRequest(f"k{m}{i}", f"/ck/{m}/{i}", "q", 0, ()), {"model": m, "run_id": f"{m}-r"})
        for m in ("small", "wide")
        for i in range(3)
    ]
    blocks = _blocks(todo, 2)
    assert [len({p["model"] for _, p in b}) for b in blocks] == [1, 1, 1, 1]
    assert sorted(r.key for b in blocks for r, _ in b) == sorted(r.key for r, _ in todo)
