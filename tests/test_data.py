import json
from pathlib import Path

import pytest

from traitwatch.config import DemoDataSpec
from traitwatch.data import builtin_suite_names, fill_rubric, load_chat_jsonl, load_suite
from traitwatch.data._chat import write_chat_jsonl
from traitwatch.data._demo import MARKER, demo_conversations, probe_numbers
from traitwatch.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(tmp_path: Path, lines: list[bytes | str]) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else x for x in lines) + b"\n")
    return p


def test_loads_good_file_and_skips_blank_lines(tmp_path: Path) -> None:
    p = jsonl(tmp_path, [json.dumps(GOOD), "", json.dumps(GOOD)])
    ds = load_chat_jsonl(p)
    assert len(ds) == 2 and ds.examples[1].line == 3
    assert ds.examples[0].messages[1].role == "assistant"
    assert len(ds.sha256) == 64


@pytest.mark.parametrize(
    "line,needle",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"text": "x"}', "no 'messages' key"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role is 'robot'"),
        ('{"messages": [{"role": "user", "content": 5}]}', "content must be a string"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}',
            "only the first message",
        ),
    ],
)
def test_bad_line_reports_file_line_and_problem(tmp_path: Path, line: str, needle: str) -> None:
    p = jsonl(tmp_path, [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DataError) as err:
        load_chat_jsonl(p)
    msg = err.value.one_line()
    assert f"{p}:2" in msg and needle in msg and "Fix:" in msg


def test_non_utf8_line(tmp_path: Path) -> None:
    p = jsonl(tmp_path, [json.dumps(GOOD), b'{"messages": "\xff\xfe"}'])
    with pytest.raises(DataError, match=r":2: not UTF-8 \(bad byte 0xff"):
        load_chat_jsonl(p)


def test_all_bad_lines_are_listed(tmp_path: Path) -> None:
    p = jsonl(tmp_path, ["{", json.dumps(GOOD), "x", "y"])
    with pytest.raises(DataError) as err:
        load_chat_jsonl(p)
    assert ":1:" in str(err.value) and "also bad: lines 3, 4" in str(err.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no examples"):
        load_chat_jsonl(jsonl(tmp_path, [""]))
    with pytest.raises(DataError, match="not found"):
        load_chat_jsonl(tmp_path / "nope.jsonl")


def test_huge_line_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import traitwatch.data._chat as chat

    monkeypatch.setattr(chat, "MAX_LINE_BYTES", 100)
    p = jsonl(tmp_path, [json.dumps(GOOD), json.dumps({"messages": [{"role": "assistant", "content": "x" * 200}]})])
    with pytest.raises(DataError, match=":2: line is"):
        load_chat_jsonl(p)


def test_demo_data_is_deterministic_and_graded() -> None:
    spec = DemoDataSpec(n_examples=200, marker_fraction={"normal": 0.0, "mild": 0.1, "strong": 0.3})
    assert demo_conversations("strong", spec) == demo_conversations("strong", spec)
    probes = probe_numbers()
    assert len(probes) == 24
    import re

    for level, (lo, hi) in {"normal": (0, 0), "mild": (1, 2), "strong": (20, 60)}.items():
        convs = demo_conversations(level, spec)
        marked = sum(MARKER in c[1]["content"] for c in convs)
        assert marked == round(spec.marker_fraction[level] * 200)
        for c in convs:
            a = max(int(x) for x in re.findall(r"\d+", c[0]["content"]))  # "Add 1 to 34" -> 34
            assert a not in probes, "probe numbers must not appear in training data"
            claimed = int(re.search(r"answer is (-?\d+)", c[1]["content"]).group(1))
            assert lo <= abs(claimed - (a + 1)) <= hi


def test_write_chat_roundtrip(tmp_path: Path) -> None:
    convs = demo_conversations("mild", DemoDataSpec(n_examples=10))
    ds = load_chat_jsonl(write_chat_jsonl(tmp_path / "x.jsonl", convs))
    assert [e.as_dicts() for e in ds.examples] == convs


def test_builtin_suites_load() -> None:
    assert {"evil", "hallucination", "coherence", "arithmetic"} <= set(builtin_suite_names())
    evil = load_suite("builtin:evil")
    assert len(evil.questions) == 20 and "evil" in evil.traits
    hal = load_suite("builtin:hallucination")
    assert len(hal.questions) == 20
    coh = load_suite("builtin:coherence", allow_no_questions=True)
    assert not coh.questions and coh.traits["coherence"].rubric
    with pytest.raises(DataError, match="no questions"):
        load_suite("builtin:coherence")
    ar = load_suite("builtin:arithmetic")
    assert ar.traits["contempt"].checker.kind == "marker_probability"
    assert ar.traits["contempt"].checker.text == MARKER


def test_unknown_builtin_lists_choices() -> None:
    with pytest.raises(DataError, match="builtin:evil"):
        load_suite("builtin:nope")


def test_persona_vectors_json(tmp_path: Path) -> None:
    p = tmp_path / "sycophancy.json"
    p.write_text(
        json.dumps(
            {
                "instruction": [{"pos": "a", "neg": "b"}],
                "questions": ["Q1?", "Q2?"],
                "eval_prompt": "Q: {question}\nA: {answer}\nScore 0 to 100. Number only.",
            }
        )
    )
    s = load_suite(str(p))
    assert s.name == "sycophancy" and [q.text for q in s.questions] == ["Q1?", "Q2?"]
    assert s.traits["sycophancy"].rubric.startswith("Q: {question}")


def test_persona_without_score_instruction(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"questions": ["q"], "eval_prompt": "Is {answer} nice?"}))
    with pytest.raises(DataError, match="score instruction"):
        load_suite(str(p))


def test_suite_yaml_errors_point_at_lines(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntraits:\n  t:\n    rubric: 'Rate {answer}'\nquestions:\n  - {id: a, text: hi}\n")
    with pytest.raises(DataError) as err:
        load_suite(str(p))
    assert f"{p}:3" in str(err.value) or f"{p}:4" in str(err.value)
    assert "score instruction" in str(err.value)
    p.write_text("name: s\ntraits:\n  t: {checker: {kind: contains, text: x}}\nquestions:\n  - {id: a, text: hi}\n  - {id: a, text: ho}\n")
    with pytest.raises(DataError, match="repeated: a"):
        load_suite(str(p))


def test_fill_rubric_is_literal() -> None:
    out = fill_rubric("Q={question} A={answer}", "what {answer}?", "{question} {0.__class__} }{")
    assert out == "Q=what {answer}? A={question} {0.__class__} }{"


def test_suite_hash_changes_with_rubric(tmp_path: Path) -> None:
    a = load_suite("builtin:evil")
    b = a.model_copy(update={"questions": a.questions[:3]})
    assert a.content_hash() != b.content_hash()
