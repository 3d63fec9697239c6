"""Security properties: no code execution paths, no pickle, and API keys never stored or printed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openai_server import FakeOpenAI

SRC = Path(__file__).resolve().parents[1] / "src" / "traitwatch"


def test_no_eval_exec_pickle_or_unsafe_loading_in_the_source() -> None:
    banned = {
        r"(?<![\w.])eval\(": "eval",
        r"(?<![\w.])exec\(": "exec",
        r"(?m)^\s*(import|from)\s+(c?pickle|dill|joblib)\b": "pickle import",
        r"\bpickle\.loads?\(": "pickle.load",
        r"torch\.load\(": "torch.load",
        r"yaml\.load\(": "yaml.load (use safe_load)",
        r"trust_remote_code\s*=\s*True": "trust_remote_code=True",
        r"\.format\(\s*\*\*": "str.format(**...) on data",
    }
    hits = []
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        for pattern, name in banned.items():
            if re.search(pattern, text):
                hits.append(f"{f.relative_to(SRC)}: {name}")
    assert not hits, hits


def test_api_key_never_reaches_any_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    """Runs its own study: the judge is an API judge with a key (the shared completed study has none)."""
    from traitwatch.cli import app

    key = "sk-traitwatch-dummy-4f1c9e2a7b"
    monkeypatch.setenv("TW_DUMMY_KEY", key)
    with FakeOpenAI([("30", -0.5), ("70", -1.0)]) as srv:
        spec = tiny_study_dict(
            tmp_path / "out",
            judges=[
                {
                    "name": "api",
                    "kind": "openai",
                    "model": "m",
                    "base_url": srv.base_url,
                    "api_key_env": "TW_DUMMY_KEY",
                    "traits": ["wrong_answer"],
                }
            ],
        )
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        runner = CliRunner()
        outputs = [runner.invoke(app, [cmd, str(path)]).output for cmd in ("run", "analyze", "report", "status", "export")]
        assert all(a == f"Bearer {key}" for a in srv.auth), "the key is sent to the server"
    for text in outputs:
        assert key not in text
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "study.sqlite" for p in files) and any(p.name == "report.html" for p in files)
    for p in files:
        assert key.encode() not in p.read_bytes(), p
