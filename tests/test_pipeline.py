"""The pipeline's shape and contracts: one module per stage, one name per stage, judge identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import traitwatch as tw
from tiny import TinyStudy
from traitwatch.cli import app
from traitwatch.errors import ConfigError

PIPELINE = Path(tw.__file__).parent / "pipeline"


def test_every_pipeline_module_is_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PIPELINE.glob("*.py")}
    assert {"_train.py", "_generate.py", "_judge.py", "_calibrate.py", "_analyze.py", "_report.py", "_preflight.py"} <= set(sizes)
    assert max(sizes.values()) <= 300, sizes


def test_the_judge_stage_never_asks_which_kind_of_judge_it_holds() -> None:
    text = (PIPELINE / "_judge.py").read_text()
    assert ".kind" not in text and "hasattr" not in text


def _rejudge(study: TinyStudy, **llm: object) -> dict[str, int]:
    """Change the llm judge's settings in the copy's YAML, run the judge stage, return its counts."""
    spec = yaml.safe_load(study.yaml.read_text())
    spec["judges"] = [j if j["name"] != "llm" else {**j, **llm} for j in spec["judges"]]
    study.yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return tw.Study.load(study.yaml).run(stages=["judge"])[0].counts["llm"]


def test_a_scoring_setting_rejudges_and_a_throughput_setting_does_not(tiny_study_copy: TinyStudy) -> None:
    """min_mass changes scores: every answer is judged again. batch_size and weak do not."""
    same = _rejudge(tiny_study_copy, batch_size=3, weak=False)
    assert same["new"] == 0 and same["links"] == 0 and same["already"] > 0
    changed = _rejudge(tiny_study_copy, min_mass=0.01)
    assert changed["new"] == same["already"] and changed["already"] == 0
    prefix = _rejudge(tiny_study_copy, min_mass=0.01, response_prefix="Score: ")
    assert prefix["new"] == same["already"]
    back = _rejudge(tiny_study_copy, min_mass=0.01, response_prefix="Score: ", batch_size=16)
    assert back["new"] == 0, "nothing already judged is judged again"


def test_evaluate_is_the_old_name_of_generate(tiny_study_copy: TinyStudy) -> None:
    for command in ("generate", "evaluate"):
        res = CliRunner().invoke(app, [command, str(tiny_study_copy.yaml)])
        assert res.exit_code == 0, res.output
        assert "generated: 0" in res.output


def test_the_old_evaluation_section_names_its_new_name(tmp_path: Path, tiny_study_dict) -> None:  # type: ignore[no-untyped-def]
    spec = tiny_study_dict(tmp_path / "out")
    spec["evaluation"] = spec.pop("generation")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(ConfigError, match="now called 'generation'"):
        tw.Study.load(path)
