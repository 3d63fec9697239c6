"""Shared fixtures: tiny random-weight models and tiny studies that run in seconds.

The tiny study itself (its settings, and running it) lives in tests/tiny.py, a plain helper
module; here it is wrapped in fixtures. Never import this file: ask for the fixture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRAITWATCH_PROGRESS", "0")

# after the environment above (ruff's E402 allows os.environ changes before imports)
from tiny import TinyStudy, folder_digest, run_tiny_study, tiny_study_dict, write_study
from traitwatch.config import ModelSpec, RandomModelSpec
from traitwatch.models import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """A 2-layer Qwen2-architecture model with random weights and the offline tokenizer (fp32)."""
    return load_model(ModelSpec(source="random", dtype="float32", device="cpu", random=RandomModelSpec(seed=0)))


@pytest.fixture(scope="session", name="tiny_study_dict")
def tiny_study_dict_fixture() -> Callable[..., dict[str, Any]]:
    """The factory ``tiny_study_dict(out, **overrides) -> dict``: the tiny study's YAML mapping,
    writing to ``out``; top-level keys in ``overrides`` replace the defaults."""
    return tiny_study_dict


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """A tiny study YAML (random model, generated demo data, 6 training steps), not yet run."""
    return write_study(tmp_path / "tiny.yaml", tiny_study_dict(tmp_path / "out"))


@pytest.fixture(scope="session")
def completed_tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStudy]:
    """The tiny study run once per session through the CLI (train, generate, judge, analyze,
    report): ``.yaml`` is its YAML, ``.out`` its output folder.

    Shared by every test that asks for it, so it is READ-ONLY: a test that changes it (reruns a
    stage, edits the store, rewrites the report) takes ``tiny_study_copy`` instead, and one that
    needs other settings runs its own. Teardown checks that no file of it changed.
    """
    study = run_tiny_study(tmp_path_factory.mktemp("completed-tiny-study"))
    before = folder_digest(study.out)
    yield study
    after = folder_digest(study.out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared completed_tiny_study (use tiny_study_copy): {changed}"


@pytest.fixture
def tiny_study_copy(completed_tiny_study: TinyStudy, tmp_path: Path) -> TinyStudy:
    """A private copy of the completed tiny study under ``tmp_path``, free to change."""
    return completed_tiny_study.copy_to(tmp_path / "copy")
