"""Every bad input in the catalogue: exit 2, one line with where/what/fix, no stored work lost,
and docs/errors.md says exactly what the user sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bad_inputs import CASES, Case, garbage_server, normalize, run_case
from tiny import TinyStudy

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@pytest.fixture(scope="module")
def done(completed_tiny_study: TinyStudy) -> Path:
    """The session's completed tiny study; every stored-work case copies it before changing it."""
    return completed_tiny_study.out


@pytest.fixture(scope="module", autouse=True)
def garbage(done: Path) -> object:
    srv = garbage_server()
    with srv:  # type: ignore[attr-defined]
        os.environ["TW_GARBAGE_URL"] = srv.base_url  # type: ignore[attr-defined]
        yield srv
    os.environ.pop("TW_GARBAGE_URL", None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, done: Path) -> None:
    code, line, intact = run_case(case, tmp_path, done)
    assert code == 2, line
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, line
    assert "Fix: " in line, line
    for fragment in case.expect:
        assert fragment in line, (fragment, line)
    assert intact, "stored work must not change"
    doc = DOC.read_text()
    assert f"`{normalize(line, tmp_path)}`" in doc.replace("\\|", "|"), "docs/errors.md is stale: run python scripts/gen_errors_doc.py"
