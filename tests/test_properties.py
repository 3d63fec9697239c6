"""Property-based tests of the parsers: whatever the input, the result is a parsed value or
one of our errors (with a location), never a crash."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traitwatch.config import parse_study, read_yaml
from traitwatch.data import fill_rubric, load_chat_jsonl, load_suite
from traitwatch.data._chat import write_chat_jsonl
from traitwatch.errors import ConfigError, DataError
from traitwatch.judges._check import claimed_number
from traitwatch.judges._numbers import top_logprob_distribution, weighted_mean

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_jsonl_arbitrary_bytes_parse_or_fail_with_a_line(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.jsonl"
        p.write_bytes(b"\n".join(lines))
        try:
            ds = load_chat_jsonl(p)
        except DataError as exc:
            assert exc.where is not None and str(p) in exc.where
        else:
            assert len(ds) >= 1


message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=40)})


@SETTINGS
@given(st.lists(st.lists(message, min_size=1, max_size=4), min_size=1, max_size=5))
def test_valid_conversations_round_trip(convs: list[list[dict[str, str]]]) -> None:
    convs = [c + [{"role": "assistant", "content": "ok"}] for c in convs]
    with tempfile.TemporaryDirectory() as d:
        ds = load_chat_jsonl(write_chat_jsonl(Path(d) / "x.jsonl", convs))
    assert [e.as_dicts() for e in ds.examples] == convs


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["name", "datasets", "traits", "training", "levels", "seeds", "model", "judges", "zzz"]), json_values, max_size=6
    )
)
def test_study_spec_arbitrary_mappings_validate_or_fail_cleanly(data: dict[str, object]) -> None:
    try:
        spec = parse_study(data, file="s.yaml", base=Path("/tmp"))
    except ConfigError as exc:
        assert exc.where and exc.where.startswith("s.yaml") and exc.fix
    else:
        assert spec.name and spec.datasets and spec.traits


@SETTINGS
@given(st.text(max_size=300))
def test_yaml_text_parses_or_fails_with_a_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.yaml"
        p.write_text(text, encoding="utf-8")
        try:
            read_yaml(p)
        except ConfigError as exc:
            assert exc.where is not None and exc.where.startswith(str(p))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["name", "traits", "questions", "version", "description", "x"]), json_values, max_size=5))
def test_suite_files_load_or_fail_cleanly(data: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "suite.yaml"
        p.write_text(yaml.safe_dump(data))
        try:
            suite = load_suite(str(p))
        except DataError as exc:
            assert exc.where is not None and str(p) in exc.where
        else:
            assert suite.questions and suite.traits


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_fill_rubric_inserts_question_and_answer_literally(prefix: str, question: str, answer: str) -> None:
    rubric = prefix.replace("{", "(").replace("}", ")") + "Q: {question} A: {answer} 0 to 100"
    out = fill_rubric(rubric, question, answer)
    head = prefix.replace("{", "(").replace("}", ")")
    assert out == f"{head}Q: {question} A: {answer} 0 to 100"


@SETTINGS
@given(st.text(max_size=80), st.text(max_size=30))
def test_claim_parser_never_crashes(answer: str, question: str) -> None:
    v = claimed_number(answer, question or None)
    assert v is None or isinstance(v, int)


@SETTINGS
@given(st.lists(st.tuples(st.text(max_size=4), st.floats(min_value=-30, max_value=0)), max_size=20))
def test_weighted_mean_stays_in_range(top: list[tuple[str, float]]) -> None:
    dist = top_logprob_distribution(top)
    s = weighted_mean(dist, min_mass=0.0)
    assert s.mass == sum(dist.values())
    assert s.score is None or (0.0 <= s.score <= 100.0 + 1e-9)
    assert all(0 <= k <= 100 for k in dist) and all(math.isfinite(v) for v in dist.values())


def test_persona_json_arbitrary_values_fail_cleanly() -> None:
    with tempfile.TemporaryDirectory() as d:
        for obj in ([], {"questions": "q"}, {"questions": [1], "eval_prompt": "x"}, {"questions": ["q"], "eval_prompt": 3}):
            p = Path(d) / "t.json"
            p.write_text(json.dumps(obj))
            try:
                load_suite(str(p))
            except DataError as exc:
                assert str(p) in (exc.where or "")
            else:
                raise AssertionError(obj)
