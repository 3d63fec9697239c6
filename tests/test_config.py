from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from traitwatch.config import dump_study, load_study, parse_study
from traitwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def test_valid_study_loads_with_defaults(tiny_study: Path) -> None:
    spec = load_study(tiny_study)
    assert spec.training.save_every == 2
    assert spec.generation.samples_per_question == 2
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


def test_dump_roundtrip(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    spec = parse_study(tiny_study_dict(tmp_path / "o"), base=tmp_path)
    again = parse_study(yaml.safe_load(dump_study(spec)), base=tmp_path)
    assert again == spec


def test_examples_load_and_demo_matches_packaged_copy() -> None:
    from importlib.resources import files

    demo = load_study(ROOT / "examples" / "demo.yaml")
    packaged = files("traitwatch.data").joinpath("studies").joinpath("demo.yaml").read_text()
    example = (ROOT / "examples" / "demo.yaml").read_text()
    # the same study; only where it writes differs: `traitwatch demo` copies the packaged spec
    # into its output folder (output_dir: .), the example writes outside the repository
    assert "output_dir: .\n" in packaged and "output_dir: ~/traitwatch-runs/demo" in example
    strip = lambda text: [line for line in text.splitlines() if not line.startswith("output_dir:")]  # noqa: E731
    assert strip(example) == strip(packaged)
    assert demo.output_dir == Path("~/traitwatch-runs/demo").expanduser()
    assert demo.model.source == "embedded"
    paper = load_study(ROOT / "examples" / "paper.yaml")
    assert paper.model.id == "Qwen/Qwen2.5-7B-Instruct"
    assert paper.lora.r == 32 and paper.lora.alpha == 64 and paper.lora.use_rslora
    assert paper.training.effective_batch_size == 16 and paper.training.save_every == 2
    assert paper.training.learning_rate == 1e-5 and paper.training.warmup_steps == 5
    assert paper.generation.samples_per_question == 10 and paper.generation.temperature == 1.0
    assert {d.domain for d in paper.datasets} == {"medical", "math"}
    assert any(j.kind == "openai" and j.model == "gpt-4.1-mini-2025-04-14" for j in paper.judges)  # the pinned snapshot


# -- judges: one kind per judge, each with only its own keys ------------------------------------------
JUDGE_STUDY = "name: x\ndatasets:\n  - domain: d\n    demo: {}\ntraits: [builtin:evil]\njudges:\n"


def judge_error(tmp_path: Path, judges: str) -> str:
    p = write(tmp_path, JUDGE_STUDY + judges)
    with pytest.raises(ConfigError) as err:
        load_study(p)
    return err.value.one_line().replace(str(p), "study.yaml")


def test_judge_kinds_load_as_their_own_specs(tmp_path: Path) -> None:
    from traitwatch.config import CheckJudgeSpec, LocalJudgeSpec, OpenAIJudgeSpec

    p = write(
        tmp_path,
        JUDGE_STUDY + "  - {name: c, kind: check}\n  - {name: l, kind: local}\n"
        "  - {name: o, kind: openai, model: gpt-4.1-mini, api_key_file: key.txt}\n",
    )
    check, local, api = load_study(p).judges
    assert isinstance(check, CheckJudgeSpec) and isinstance(local, LocalJudgeSpec) and isinstance(api, OpenAIJudgeSpec)
    assert local.local.source == "base" and api.api_key_file == tmp_path / "key.txt"
    assert [j.label() for j in (check, local, api)] == ["reference checkers", "the study's base model", "gpt-4.1-mini"]


def test_a_key_of_another_judge_kind_is_an_unknown_key(tmp_path: Path) -> None:
    msg = judge_error(tmp_path, "  - name: c\n    kind: check\n    api_key_env: KEY\n")
    assert msg.startswith("study.yaml:9: judges[0].api_key_env: unknown key")
    assert "is a key of kind: openai, not of kind: check" in msg and "allowed keys here: name, kind, traits, weak, every" in msg


def test_mistakes_inside_a_judge_point_at_its_line_and_key(tmp_path: Path) -> None:
    msg = judge_error(tmp_path, "  - name: c\n    kind: check\n  - name: o\n    kind: openai\n    model: m\n    max_concurency: 4\n")
    assert msg.startswith("study.yaml:12: judges[1].max_concurency: unknown key") and "did you mean 'max_concurrency'" in msg
    msg = judge_error(tmp_path, "  - name: l\n    kind: local\n    local:\n      source: hub\n      id: x\n      revison: main\n")
    assert msg.startswith("study.yaml:12: judges[0].local.revison: unknown key") and "did you mean 'revision'" in msg
    msg = judge_error(tmp_path, "  - name: o\n    kind: openai\n    model: m\n    scale: 0-5\n")
    assert msg.startswith("study.yaml:10: judges[0].scale:") and "(got '0-5')" in msg
    msg = judge_error(tmp_path, "  - name: o\n    kind: openai\n")
    assert msg.startswith("study.yaml:7: judges[0].model: Field required") and "add 'model'" in msg and "gpt-4.1-mini" in msg


def test_missing_or_unknown_judge_kind_is_one_clear_line(tmp_path: Path) -> None:
    msg = judge_error(tmp_path, "  - name: a\n    weak: true\n")
    assert msg.startswith("study.yaml:7: judges[0]: missing 'kind'") and "add 'kind' with one of: check, local, openai" in msg
    msg = judge_error(tmp_path, "  - name: a\n    kind: open-ai\n    model: m\n")
    assert msg.startswith("study.yaml:8: judges[0].kind: unknown kind (got 'open-ai')")
    assert "did you mean 'openai'?" in msg and "use one of: check, local, openai" in msg
    assert "\n" not in msg


def test_a_folder_stands_for_its_only_study_file(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    """``traitwatch export traitwatch-demo``: the demo writes demo.yaml into its folder."""
    folder = tmp_path / "study"
    folder.mkdir()
    with pytest.raises(ConfigError, match="holds no study file"):
        load_study(folder)
    (folder / "demo.yaml").write_text(yaml.safe_dump(tiny_study_dict(".")))
    (folder / "notes.txt").write_text("not a study")
    spec = load_study(folder)
    assert spec == load_study(folder / "demo.yaml") and spec.output_dir == folder.resolve()
    (folder / "other.yml").write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"holds 2 YAML files \(demo.yaml, other.yml\)") as exc:
        load_study(folder)
    assert "Fix: pass the study's YAML file" in str(exc.value)
