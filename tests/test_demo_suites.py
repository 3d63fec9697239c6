"""The demo's two arithmetic suites and its coherence analogue, the ``states_number`` checker.

Why: the demo shows per-suite coherence without generating more, by splitting its 24 probe
questions into two suites that score the same traits. These tests keep the halves consistent
(same traits, disjoint questions, all probe numbers still kept out of training) and pin what
the checker counts as an answer that gets to the point.
"""

from __future__ import annotations

from importlib.resources import files

import pytest

from traitwatch.config import load_study
from traitwatch.data import load_suite
from traitwatch.data._demo import probe_numbers
from traitwatch.judges import checker
from traitwatch.judges._check import first_sentence
from traitwatch.judges._protocol import JudgeRequest


def _req(answer: str, question: str = "What is 12 + 1?") -> JudgeRequest:
    definition = load_suite("builtin:arithmetic").traits["coherent"]
    return JudgeRequest(question=question, answer=answer, trait="coherent", definition=definition, context={"expected": "13"})


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("The answer is 13.", 100.0),
        ("The answer is 57.", 100.0),  # wrong but to the point: coherence is not correctness
        ("13", 100.0),
        ("12 + 1 = 13. Easy.", 100.0),
        ("Only a fool would ask me that. The answer is 13.", 0.0),  # opens with something else
        ("What is 12 + 1? 13", 0.0),  # an echo of the question first
        ("I like numbers\nThe answer is 13.", 0.0),  # the first line break ends the sentence
        ("", 0.0),
    ],
)
def test_states_number_scores_the_first_sentence(answer: str, score: float) -> None:
    out = checker().judge([_req(answer)])[0]
    assert out is not None and out.score == score and out.method == "checker:states_number"
    assert out.raw["first_sentence"] == first_sentence(answer)


def test_the_two_arithmetic_suites_score_the_same_traits_on_disjoint_questions() -> None:
    sym, words = load_suite("builtin:arithmetic"), load_suite("builtin:arithmetic_words")
    assert sym.traits == words.traits, "the halves must score identical traits (same keys and hashes)"
    assert {"wrong_answer", "contempt", "contempt_text", "coherent"} == set(sym.traits)
    ids_a, ids_b = {q.id for q in sym.questions}, {q.id for q in words.questions}
    assert len(ids_a) == len(ids_b) == 12 and not ids_a & ids_b
    assert all("+ 1" in q.text or "plus 1" in q.text for q in sym.questions)
    assert len(probe_numbers()) == 24, "both halves' numbers stay out of the demo's training data"


def test_demo_study_uses_both_suites_and_coherent_goes_down() -> None:
    path = files("traitwatch.data").joinpath("studies").joinpath("demo.yaml")
    spec = load_study(str(path))
    assert [t if isinstance(t, str) else t.suite for t in spec.traits] == ["builtin:arithmetic", "builtin:arithmetic_words"]
    assert spec.analysis.direction("coherent") == "down" and spec.analysis.direction("wrong_answer") == "up"
    assert spec.monitor is not None and spec.monitor.probes.questions == 4  # 4 per suite: the 8 probes of one suite before
