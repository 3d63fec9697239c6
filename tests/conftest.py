"""Shared fixtures: tiny random-weight models and tiny studies that run in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRAITWATCH_PROGRESS", "0")

from traitwatch.config import ModelSpec, RandomModelSpec  # noqa: E402
from traitwatch.models import LoadedModel, load_model  # noqa: E402

TINY = {"source": "random", "dtype": "float32", "device": "cpu", "random": {"architecture": "qwen2", "seed": 0}}


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """A 2-layer Qwen2-architecture model with random weights and the offline tokenizer (fp32)."""
    return load_model(ModelSpec(source="random", dtype="float32", device="cpu", random=RandomModelSpec(seed=0)))


def tiny_study_dict(out: Path, **overrides: object) -> dict:
    spec: dict = {
        "name": "tiny",
        "output_dir": str(out),
        "model": TINY,
        "datasets": [{"domain": "arith", "demo": {"n_examples": 48, "marker_fraction": {"normal": 0.0, "mild": 0.2, "strong": 0.4}}}],
        "levels": ["normal", "strong"],
        "seeds": [0],
        "lora": {"r": 4, "alpha": 8},
        "training": {
            "learning_rate": 5e-3,
            "warmup_steps": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_steps": 6,
            "save_every": 2,
            "max_length": 48,
            "heldout_fraction": 0.1,
            "heldout_max": 4,
        },
        "traits": [{"suite": "builtin:arithmetic", "questions": 4}],
        "evaluation": {"samples_per_question": 2, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 16, "adapters_per_batch": 3},
        "judges": [
            {"name": "check", "kind": "check"},
            {"name": "llm", "kind": "local", "weak": True, "traits": ["wrong_answer"], "local": {"source": "base"}, "min_mass": 0.0},
        ],
        "analysis": {"detectors": ["threshold", "sustained", "cusum", "binseg"], "leads": [["wrong_answer", "contempt"]], "bootstrap": 50},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """A tiny study YAML (random model, generated demo data, 6 training steps)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path / "out"), sort_keys=False))
    return path
