"""The tiny study the tests run: a random-weight 2-layer model, generated demo data, 6 training steps.

A plain helper module, not a test and not conftest: tests/conftest.py wraps it in fixtures
(``tiny_study_dict``, ``tiny_study``, ``completed_tiny_study``), and tests/bad_inputs.py (which
scripts/gen_errors_doc.py also runs, outside pytest) imports it directly.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import traceback
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: The model of every tiny study: Qwen2 architecture, random weights (seed 0), fp32 on the CPU.
TINY: dict[str, Any] = {"source": "random", "dtype": "float32", "device": "cpu", "random": {"architecture": "qwen2", "seed": 0}}


def tiny_study_dict(out: Path, **overrides: object) -> dict[str, Any]:
    """The tiny study as the mapping a study YAML holds; top-level keys in ``overrides`` replace the defaults."""
    spec: dict[str, Any] = {
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
        "generation": {"samples_per_question": 2, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 16, "adapters_per_batch": 3},
        "judges": [
            {"name": "check", "kind": "check"},
            {"name": "llm", "kind": "local", "weak": True, "traits": ["wrong_answer"], "local": {"source": "base"}, "min_mass": 0.0},
        ],
        "analysis": {"detectors": ["threshold", "sustained", "cusum", "binseg"], "leads": [["wrong_answer", "contempt"]], "bootstrap": 50},
    }
    spec.update(overrides)
    return spec


def write_study(path: Path, spec: dict[str, Any]) -> Path:
    """Write a study mapping as YAML; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass(frozen=True)
class TinyStudy:
    """A study YAML and the output folder it names."""

    yaml: Path
    out: Path

    def copy_to(self, folder: Path, **overrides: object) -> TinyStudy:
        """A copy of this study's results under ``folder`` (``folder/out``) with a YAML that
        names the copy; top-level keys in ``overrides`` change the copy's settings."""
        out = folder / "out"
        shutil.copytree(self.out, out)
        spec = yaml.safe_load(self.yaml.read_text())
        spec["output_dir"] = str(out)
        spec.update(overrides)
        return TinyStudy(write_study(folder / self.yaml.name, spec), out)


def run_tiny_study(folder: Path, **overrides: object) -> TinyStudy:
    """Run the whole tiny study (train, generate, judge, analyze, report) through the CLI,
    in this process, as ``traitwatch run folder/tiny.yaml`` would; its results go to ``folder/out``."""
    from typer.testing import CliRunner

    from traitwatch.cli import app

    study = TinyStudy(write_study(folder / "tiny.yaml", tiny_study_dict(folder / "out", **overrides)), folder / "out")
    res = CliRunner().invoke(app, ["run", str(study.yaml)])
    if res.exit_code != 0:
        crashed = res.exc_info is not None and res.exception is not None and not isinstance(res.exception, SystemExit)
        tb = "".join(traceback.format_exception(*res.exc_info)) if crashed and res.exc_info else ""
        raise AssertionError(f"traitwatch run {study.yaml} exited {res.exit_code}:\n{res.output}{tb}")
    return study


def folder_digest(folder: Path) -> dict[str, str]:
    """A hash of every file under ``folder``; an SQLite database is hashed by its content (its
    WAL included), not its bytes: a mere reader creates and updates the -wal and -shm files."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm", "-journal")):
            continue
        if p.suffix == ".sqlite":
            with closing(sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True)) as db:
                data = "\n".join(db.iterdump()).encode()
        else:
            data = p.read_bytes()
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out
