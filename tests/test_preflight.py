"""Failing before work starts: unwritable output, too little disk, missing judge keys."""

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from traitwatch.cli import app

runner = CliRunner()


def test_too_little_disk_fails_before_training_with_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    from traitwatch.config import load_study
    from traitwatch.pipeline import StudyContext
    from traitwatch.pipeline._preflight import adapter_bytes

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path / "out")))
    real = shutil.disk_usage

    floor = 100 * 2**20
    monkeypatch.setattr("traitwatch.pipeline._preflight.MIN_FREE_BYTES", floor)

    def small(p: object) -> object:  # just over the floor: the preflight passes, the study's estimate does not
        u = real(p)
        return type(u)(u.total, u.total - floor - 1024, floor + 1024)

    monkeypatch.setattr(shutil, "disk_usage", small)
    assert adapter_bytes(StudyContext(load_study(path))) > 0
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    assert "GiB on the output disk" in res.output and "Fix:" in res.output
    assert not list((tmp_path / "out").rglob("step_*")), "nothing may be trained"


def test_unwritable_output_fails_before_work(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(blocker / "out")))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "output folder is not writable" in res.output


def test_missing_api_key_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    monkeypatch.delenv("TW_NO_SUCH_KEY", raising=False)
    spec = tiny_study_dict(tmp_path / "out", judges=[{"name": "api", "kind": "openai", "model": "m", "api_key_env": "TW_NO_SUCH_KEY"}])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "TW_NO_SUCH_KEY is not set" in res.output
    assert not (tmp_path / "out" / "runs").exists()


def _vllm_can_run() -> bool:
    """Whether the vllm backend can run on this machine, decided here and not by traitwatch:
    the vllm package is importable and a CUDA GPU is visible."""
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _check_vllm_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], can_run: bool) -> None:
    """Run a study with ``generation.backend: vllm`` whose judge needs an API key that is not set.

    Both kinds of machine stop in the preflight, before any training: where vllm cannot run, on
    the vllm check, with its one-line error; where it can, that check passes and the preflight
    goes on to the judges and stops on the missing key (the next check), so nothing starts vLLM.
    """
    monkeypatch.delenv("TW_NO_SUCH_KEY", raising=False)
    spec.setdefault("generation", {})["backend"] = "vllm"
    spec["judges"] = [{"name": "api", "kind": "openai", "model": "m", "api_key_env": "TW_NO_SUCH_KEY"}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    if can_run:
        assert "generation.backend is vllm" not in res.output, "vllm can run here: the vllm check must pass"
        assert "TW_NO_SUCH_KEY is not set" in errors[0], res.output
    else:
        assert "generation.backend is vllm but" in errors[0] and "backend: hf" in errors[0], res.output
        want = "the vllm package is not installed" if importlib.util.find_spec("vllm") is None else "vllm needs a CUDA GPU"
        assert want in errors[0], res.output
    assert not list((tmp_path / "out").rglob("step_*")), "nothing may be trained"


def test_vllm_backend_preflight_matches_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    """Without vllm or a GPU the study fails before training with the one-line error; with both, it passes that check."""
    _check_vllm_preflight(tmp_path, monkeypatch, tiny_study_dict(tmp_path / "out"), _vllm_can_run())


def test_vllm_backend_preflight_on_the_other_kind_of_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    """The branch this machine does not take, simulated: vllm and a GPU appear (or vanish) for the check."""
    import importlib.machinery

    import torch

    can_run = not _vllm_can_run()
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        if name == "vllm":
            return importlib.machinery.ModuleSpec("vllm", None) if can_run else None
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    if can_run:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _check_vllm_preflight(tmp_path, monkeypatch, tiny_study_dict(tmp_path / "out"), can_run)
