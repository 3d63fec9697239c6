"""Write docs/errors.md by running every case of tests/bad_inputs.py through the real CLI.

Run: python scripts/gen_errors_doc.py   (tests/test_bad_input.py checks the page is current)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TRAITWATCH_PROGRESS", "0")

from bad_inputs import CASES, completed_study, garbage_server, normalize, render, run_case  # noqa: E402


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        done = completed_study(base / "template")
        with garbage_server() as srv:  # type: ignore[attr-defined]
            os.environ["TW_GARBAGE_URL"] = srv.base_url
            for case in CASES:
                tmp = base / case.id
                code, line, intact = run_case(case, tmp, done)
                assert code == 2 and intact, (case.id, code, line)
                rows.append((case, normalize(line, tmp)))
    (ROOT / "docs" / "errors.md").write_text(render(rows))
    print(f"wrote docs/errors.md ({len(rows)} cases)")


if __name__ == "__main__":
    main()
