"""The docs stay true: the config reference is generated from the code, the README names
the two commands, and every CLI command is documented."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_config_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "config.md").read_text() == gen_config_docs.render(), "run: python scripts/gen_config_docs.py"


def test_readme_commands_and_cli_commands_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert readme.index("make demo") < readme.index("make test")
    from traitwatch.cli import app

    for cmd in app.registered_commands:
        if cmd.hidden:  # an old name kept as an alias (evaluate -> generate)
            continue
        name = cmd.name or cmd.callback.__name__
        assert f"traitwatch {name}" in readme, f"README must document `traitwatch {name}`"


def test_ci_calls_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0
