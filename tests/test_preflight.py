"""Failing before work starts: unwritable output, too little disk, missing judge keys."""

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from traitwatch.cli import app
from traitwatch.config import load_study
from traitwatch.pipeline import StudyRunner

from conftest import tiny_study_dict

runner = CliRunner()


def test_too_little_disk_fails_before_training_with_the_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path / "out")))
    real = shutil.disk_usage

    floor = 100 * 2**20
    monkeypatch.setattr("traitwatch.pipeline._stages.MIN_FREE_BYTES", floor)

    def small(p: object) -> object:  # just over the floor: the preflight passes, the study's estimate does not
        u = real(p)
        return type(u)(u.total, u.total - floor - 1024, floor + 1024)

    monkeypatch.setattr(shutil, "disk_usage", small)
    r = StudyRunner(load_study(path))
    assert r.adapter_bytes() > 0
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    assert "GiB on the output disk" in res.output and "Fix:" in res.output
    assert not list((tmp_path / "out").rglob("step_*")), "nothing may be trained"


def test_unwritable_output_fails_before_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(blocker / "out")))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "output folder is not writable" in res.output


def test_missing_api_key_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TW_NO_SUCH_KEY", raising=False)
    spec = tiny_study_dict(tmp_path / "out", judges=[{"name": "api", "kind": "openai", "model": "m", "api_key_env": "TW_NO_SUCH_KEY"}])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "TW_NO_SUCH_KEY is not set" in res.output
    assert not (tmp_path / "out" / "runs").exists()


def test_vllm_backend_without_vllm_fails_before_training(tmp_path: Path) -> None:
    from traitwatch.generate import vllm_available

    reason = vllm_available()
    assert reason is not None, "this test describes machines without vllm or a GPU (our CI)"
    spec = tiny_study_dict(tmp_path / "out")
    spec.setdefault("evaluation", {})["backend"] = "vllm"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    assert "evaluation.backend is vllm but" in res.output and reason in res.output and "backend: hf" in res.output
    assert not list((tmp_path / "out").rglob("step_*")), "nothing may be trained"
