from pathlib import Path

import pytest
import yaml

from traitwatch.config import dump_study, load_study, parse_study
from traitwatch.errors import ConfigError

from conftest import tiny_study_dict

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def test_valid_study_loads_with_defaults(tiny_study: Path) -> None:
    spec = load_study(tiny_study)
    assert spec.training.save_every == 2
    assert spec.evaluation.samples_per_question == 2
    assert spec.analysis.leads == [("wrong_answer", "contempt")]
    assert spec.judges[1].local is not None and spec.judges[1].local.source == "base"


def test_unknown_key_names_line_key_and_suggestion(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ndatasets:\n  - domain: d\n    demo: {}\ntraits: [builtin:evil]\ntraining:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_study(p)
    msg = err.value.one_line()
    assert f"{p}:7" in msg
    assert "training.learning_rat" in msg and "unknown key" in msg
    assert "did you mean 'learning_rate'" in msg


def test_wrong_type_names_line_and_value(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ndatasets:\n  - domain: d\n    demo: {}\ntraits: [builtin:evil]\ntraining:\n  save_every: often\n")
    with pytest.raises(ConfigError) as err:
        load_study(p)
    msg = err.value.one_line()
    assert f"{p}:7" in msg and "training.save_every" in msg and "'often'" in msg and "whole number" in msg


def test_bad_literal_lists_choices(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ndatasets:\n  - domain: d\n    demo: {}\ntraits: [builtin:evil]\nlevels: [normal, extreme]\n")
    with pytest.raises(ConfigError) as err:
        load_study(p)
    msg = err.value.one_line()
    assert ":6" in msg and "levels[1]" in msg and "'mild'" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\nname: y\n")
    with pytest.raises(ConfigError, match="appears twice"):
        load_study(p)


def test_malformed_yaml_gives_line(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ndatasets: [\n  - a: b: c\n")
    with pytest.raises(ConfigError) as err:
        load_study(p)
    assert "malformed YAML" in str(err.value) and f"{p}:" in str(err.value)


@pytest.mark.parametrize("text,needle", [("", "empty"), ("- a\n- b\n", "top level must be a mapping")])
def test_empty_or_non_mapping(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_study(write(tmp_path, text))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_study(Path("/nonexistent/study.yaml"))


def test_dataset_needs_exactly_one_source(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\ndatasets:\n  - domain: d\ntraits: [builtin:evil]\n")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_study(p)


def test_relative_paths_resolve_against_yaml_folder(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    p = sub / "s.yaml"
    p.write_text("name: x\ndatasets:\n  - domain: d\n    folder: data/med\ntraits: [my_suite.yaml]\n")
    spec = load_study(p)
    assert spec.datasets[0].folder == sub / "data/med"
    assert spec.traits[0].suite == str(sub / "my_suite.yaml")
    assert spec.output_dir == sub / "runs" / "x"


def test_dump_roundtrip(tmp_path: Path) -> None:
    spec = parse_study(tiny_study_dict(tmp_path / "o"), base=tmp_path)
    again = parse_study(yaml.safe_load(dump_study(spec)), base=tmp_path)
    assert again == spec


def test_examples_load_and_demo_matches_packaged_copy() -> None:
    from importlib.resources import files

    demo = load_study(ROOT / "examples" / "demo.yaml")
    packaged = files("traitwatch.data").joinpath("studies").joinpath("demo.yaml").read_text()
    assert (ROOT / "examples" / "demo.yaml").read_text() == packaged
    assert demo.model.source == "embedded"
    paper = load_study(ROOT / "examples" / "paper.yaml")
    assert paper.model.id == "Qwen/Qwen2.5-7B-Instruct"
    assert paper.lora.r == 32 and paper.lora.alpha == 64 and paper.lora.use_rslora
    assert paper.training.effective_batch_size == 16 and paper.training.save_every == 2
    assert paper.training.learning_rate == 1e-5 and paper.training.warmup_steps == 5
    assert paper.evaluation.samples_per_question == 10 and paper.evaluation.temperature == 1.0
    assert {d.domain for d in paper.datasets} == {"medical", "math"}
    assert any(j.kind == "openai" and j.model == "gpt-4.1-mini" for j in paper.judges)
