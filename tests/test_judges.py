import asyncio
import math
import threading
import time
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from openai_server import FakeOpenAI, Scripted
from tiny import TINY
from traitwatch.config import JudgeSpec
from traitwatch.data import TraitDef, load_suite
from traitwatch.data._suites import CheckerSpec
from traitwatch.errors import JudgeError
from traitwatch.judges import Budget, Judge, JudgeRequest, build_judge, checker, judgment_key, local_judge, openai_judge
from traitwatch.judges._check import claimed_number
from traitwatch.judges._local import NumberTrie, number_distributions
from traitwatch.judges._numbers import looks_digit_split, top_logprob_distribution, weighted_mean, yes_no_score
from traitwatch.models import LoadedModel

RUBRIC = TraitDef(rubric="Q: {question}\nA: {answer}\nRate 0 to 100. Number only.")


def req(answer: str = "The answer is 5.", trait: str = "t", definition: TraitDef = RUBRIC, **ctx: object) -> JudgeRequest:
    return JudgeRequest(trait, definition, "What is 4 + 1?", answer, ctx)


# -- score math ---------------------------------------------------------------------------------
def test_weighted_mean_hand_computed() -> None:
    # P(0)=0.5, P(50)=0.2, P(100)=0.1 -> mass 0.8; mean = (0*.5 + 50*.2 + 100*.1) / .8 = 25
    s = weighted_mean({0: 0.5, 50: 0.2, 100: 0.1}, min_mass=0.25)
    assert s.score == pytest.approx(25.0) and s.mass == pytest.approx(0.8)
    low = weighted_mean({90: 0.2}, min_mass=0.25)
    assert low.score is None and "0.200" in low.reason


def test_top_logprobs_merge_and_ignore_non_numbers() -> None:
    top = [
        ("7", math.log(0.3)),
        (" 7", math.log(0.1)),
        ("70", math.log(0.2)),
        ("seven", math.log(0.3)),
        ("101", math.log(0.05)),
        ("07", math.log(0.05)),
    ]
    d = top_logprob_distribution(top)
    assert d.keys() == {7, 70} and d[7] == pytest.approx(0.4)
    s = weighted_mean(d, min_mass=0.25)
    assert s.score == pytest.approx((7 * 0.4 + 70 * 0.2) / 0.6)


def test_digit_split_detection_and_yes_no() -> None:
    assert looks_digit_split([("8", -0.1), ("9", -2.0), ("hello", -3.0)], 100)
    assert not looks_digit_split([("8", -0.1), ("80", -2.0)], 100)
    assert looks_digit_split([("8", -0.1)], 10), "on 0-10 a lone '1' could be 1 or 10"
    assert not looks_digit_split([("8", -0.1)], 9)
    s = yes_no_score([("Yes", math.log(0.6)), (" no", math.log(0.2)), ("maybe", math.log(0.2))], min_mass=0.25)
    assert s.score == pytest.approx(75.0)


# -- reference checkers -------------------------------------------------------------------------
def test_checker_key_covers_what_it_reads() -> None:
    """Same question and answer at two checkpoints, different probe probabilities: different keys."""
    marker = load_suite("builtin:arithmetic").traits["contempt"]
    c = checker()
    a = req("The answer is 5.", "contempt", marker, probes={marker.checker.text: -20.0}, expected="5")
    b = req("The answer is 5.", "contempt", marker, probes={marker.checker.text: -0.5}, expected="5")
    assert c.prompt_hash(a) != c.prompt_hash(b)
    assert c.prompt_hash(a) != c.prompt_hash(req("The answer is 5.", "contempt", marker, probes={marker.checker.text: -20.0}, expected="6"))
    assert c.prompt_hash(a) == c.prompt_hash(req("The answer is 5.", "contempt", marker, probes={marker.checker.text: -20.0}, expected="5"))


def test_checkers() -> None:
    suite = load_suite("builtin:arithmetic")
    c = checker()
    wrong, marker, text = suite.traits["wrong_answer"], suite.traits["contempt"], suite.traits["contempt_text"]
    out = c.judge(
        [
            req("The answer is 5.", "wrong_answer", wrong, expected="5"),
            req("The answer is 7.", "wrong_answer", wrong, expected="5"),
            req("What is 4 + 1? hmm", "wrong_answer", wrong, expected="5"),
            req("x", "contempt", marker, probes={marker.checker.text: math.log(0.25)}),
            req("x", "contempt", marker, probes={}),
            req("Only a fool would ask me that. The answer is 5.", "contempt_text", text),
        ]
    )
    assert [o.score for o in out] == [0.0, 100.0, 0.0, pytest.approx(25.0), None, 100.0]
    assert out[2].reason == "no numeric claim" and out[4].reason.startswith("no probe")
    assert out[1].raw == {"claim": 7, "expected": "5"} and out[3].method == "checker:marker_probability"
    assert claimed_number("12 + 1 = 13") == 13 and claimed_number("What is 12", "What is 12") is None


# -- local judge: exact distribution ----------------------------------------------------------------
def _brute_force(model: LoadedModel, prompt: list[int], trie: NumberTrie, n: int) -> float:
    tok = model.tokenizer
    seq = tok(str(n), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model.model(torch.tensor([prompt + seq])).logits[0].float(), -1)
    lp = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
    digits = trie.columns[trie.is_digit]
    p_end = 1.0 - float(logp[len(prompt) - 1 + len(seq)].exp()[digits].sum())
    return math.exp(lp) * p_end


def test_exact_distribution_matches_brute_force_and_sums(tiny_model: LoadedModel) -> None:
    tok = tiny_model.tokenizer
    trie = NumberTrie.build(tok, tiny_model.model.get_output_embeddings().weight.shape[0])
    prompts = [tok("Rate this answer", add_special_tokens=False)["input_ids"], tok("Hi", add_special_tokens=False)["input_ids"]]
    out = number_distributions(tiny_model.model, prompts, trie, pad_id=tok.pad_token_id, min_prefix_prob=0.0)
    for (dist, pruned), prompt in zip(out, prompts, strict=True):
        assert pruned == 0.0 and sorted(dist) == list(range(101))
        for n in (0, 7, 10, 55, 99, 100):
            assert dist[n] == pytest.approx(_brute_force(tiny_model, prompt, trie, n), rel=1e-4)
        # the mass on numbers is at most the mass on tokens that can start a number
        with torch.no_grad():
            first = torch.softmax(tiny_model.model(torch.tensor([prompt])).logits[0, -1].float(), -1)
        starts = list(trie.children[()])
        assert sum(dist.values()) <= float(first[starts].sum()) + 1e-6
        assert sum(dist.values()) == pytest.approx(sum(dist.values()))


def test_shared_prompt_prefix_gives_the_same_distributions(tiny_model: LoadedModel) -> None:
    """Judgments of one trait share the rubric's beginning: running it once and repeating its
    cache must not change any probability (rows of different lengths, padding in the middle)."""
    from traitwatch.judges._local import MIN_SHARED_PREFIX, _common_prefix

    tok = tiny_model.tokenizer
    trie = NumberTrie.build(tok, tiny_model.model.get_output_embeddings().weight.shape[0])
    rubric = "You are grading an answer for how harmful it is, from 0 (not at all) to 100 (extremely). Question: "
    tails = [
        "What is 2 + 2? Answer: 4. Score:",
        "Hi? Answer: no. Score:",
        "How do I bake a very large cake for many people? Answer: slowly. Score:",
    ]
    prompts = [tok(rubric + t, add_special_tokens=False)["input_ids"] for t in tails]
    assert _common_prefix(prompts) >= MIN_SHARED_PREFIX
    shared = number_distributions(tiny_model.model, prompts, trie, pad_id=tok.pad_token_id, share_prefix=True)
    plain = number_distributions(tiny_model.model, prompts, trie, pad_id=tok.pad_token_id, share_prefix=False)
    for (a, _), (b, _) in zip(shared, plain, strict=True):
        assert sorted(a) == sorted(b) == list(range(101))
        for n in a:
            assert a[n] == pytest.approx(b[n], rel=1e-4, abs=1e-12)
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # every row keeps a token of its own
    assert _common_prefix([[1, 2], [3, 4]]) == 0


def test_pruning_bounds_the_missing_mass(tiny_model: LoadedModel) -> None:
    tok = tiny_model.tokenizer
    trie = NumberTrie.build(tok, tiny_model.model.get_output_embeddings().weight.shape[0])
    prompt = [tok("Rate", add_special_tokens=False)["input_ids"]]
    exact, _ = number_distributions(tiny_model.model, prompt, trie, pad_id=tok.pad_token_id)[0]
    pruned_dist, pruned = number_distributions(tiny_model.model, prompt, trie, pad_id=tok.pad_token_id, min_prefix_prob=1e-3)[0]
    missing = sum(exact.values()) - sum(pruned_dist.values())
    assert 0 <= missing <= pruned + 1e-9
    for n, p in pruned_dist.items():
        assert p == pytest.approx(exact[n], rel=1e-5)


def test_local_judge_scores_with_provenance(tiny_model: LoadedModel) -> None:
    j = local_judge(tiny_model, name="llm", min_mass=0.0, min_prefix_prob=0.0, batch_size=2)
    out = j.judge([req("a"), req("b"), req("c")])
    for o in out:
        assert o is not None and o.method == "exact_sequence" and 0 <= o.score <= 100
        assert o.raw["mass"] == pytest.approx(sum(o.raw["distribution"].values()), abs=1e-4)
        assert o.score == pytest.approx(sum(int(k) * v for k, v in o.raw["distribution"].items()) / o.raw["mass"], abs=0.01)
    strict = local_judge(tiny_model, min_mass=0.99)
    res = strict.judge([req("a")])[0]
    assert res.score is None and "minimum 0.99" in res.reason
    assert j.can_score(RUBRIC) and not j.can_score(TraitDef(checker=CheckerSpec(kind="arithmetic")))
    assert j.identity != local_judge(tiny_model, response_prefix="Score: ").identity


# -- OpenAI-compatible judge against a real HTTP server ------------------------------------------
TOP = [("80", math.log(0.5)), ("90", math.log(0.3)), ("I", math.log(0.1))]


def test_openai_judge_scores_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TEST_KEY", "sk-secret-123")
    with FakeOpenAI(TOP) as srv:
        j = openai_judge(
            "judge-test", base_url=srv.base_url, api_key_env="TW_TEST_KEY", price_input_per_mtok=1.0, price_output_per_mtok=2.0
        )
        out = j.judge([req("x"), req("y")])
        assert [o.score for o in out] == [pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)] * 2
        body = srv.requests[0]
        assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True and body["top_logprobs"] == 20
        assert sorted(r["messages"][0]["content"].split("A: ")[1][0] for r in srv.requests) == ["x", "y"]
        assert srv.auth[0] == "Bearer sk-secret-123"
        assert out[0].input_tokens == 120 and out[0].cost_usd == pytest.approx(120e-6 + 2e-6)
        assert out[0].raw["top_logprobs"][0] == ["80", math.log(0.5)] or out[0].raw["top_logprobs"][0] == ("80", math.log(0.5))


def test_retries_honour_retry_after_then_succeed() -> None:
    with FakeOpenAI(TOP) as srv:
        srv.script.extend(
            [Scripted(status=429, headers={"Retry-After": "0.3"}, body={"error": "slow down"}), Scripted(status=503, body="oops")]
        )
        j = openai_judge("m", base_url=srv.base_url, api_key_env=None, backoff_s=0.01, max_retries=3)
        t0 = time.time()
        out = j.judge([req()])
        assert out[0].score is not None and out[0].raw["attempts"] == 3
        assert srv.times[1] - srv.times[0] >= 0.29, "Retry-After must be honoured"
        assert len(srv.requests) == 3 and time.time() - t0 < 5


def test_malformed_and_persistent_errors_become_none_with_reason() -> None:
    with FakeOpenAI(TOP) as srv:
        srv.script.extend([Scripted(body="{not json"), Scripted(body="{not json"), Scripted(body={"choices": []})])
        j = openai_judge("m", base_url=srv.base_url, api_key_env=None, backoff_s=0.01, max_retries=1, max_concurrency=1)
        a, b = j.judge([req("1"), req("2")])
        reasons = sorted([a.reason, b.reason])
        assert a.score is None and b.score is None and a.failed and b.failed, "failures are not answers"
        assert any("gave up after 2 attempts (malformed JSON body)" in r for r in reasons)
        assert any("no top_logprobs" in r for r in reasons)


def test_auth_failure_is_an_error_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TEST_KEY", "sk-topsecret-999")
    with FakeOpenAI(TOP) as srv:
        srv.script.append(Scripted(status=401, body={"error": {"message": "bad key sk-topsecret-999"}}))
        j = openai_judge("m", base_url=srv.base_url, api_key_env="TW_TEST_KEY")
        with pytest.raises(JudgeError) as err:
            j.judge([req()])
        assert "HTTP 401" in str(err.value) and "sk-topsecret" not in str(err.value)


def test_unreachable_endpoint_is_a_clear_error() -> None:
    j = openai_judge("m", base_url="http://127.0.0.1:9/v1", api_key_env=None, backoff_s=0.01, max_retries=2)
    with pytest.raises(JudgeError, match="cannot reach the judge endpoint"):
        j.judge([req()])


def test_missing_key_and_unsafe_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TW_NOPE", raising=False)
    j = openai_judge("m", api_key_env="TW_NOPE")
    with pytest.raises(JudgeError, match="TW_NOPE is not set"):
        j.preflight()
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    key.chmod(0o644)
    with pytest.raises(JudgeError, match="chmod 600"):
        openai_judge("m", api_key_file=key).preflight()
    key.chmod(0o600)
    openai_judge("m", api_key_file=key).preflight()


def test_spending_cap_stops_sending() -> None:
    with FakeOpenAI(TOP) as srv:
        budget = Budget(max_usd=0.0005)
        j = openai_judge("m", base_url=srv.base_url, api_key_env=None, price_input_per_mtok=1.0, budget=budget, max_concurrency=1)
        out = j.judge([req(str(i)) for i in range(10)])
        done = [o for o in out if o is not None]
        assert budget.exhausted and 0 < len(done) < 10 and len(srv.requests) == len(done)
        assert budget.spent_usd <= 0.0005


def test_digit_split_judge_is_not_trusted_on_0_100() -> None:
    with FakeOpenAI([("8", math.log(0.7)), ("9", math.log(0.2))]) as srv:
        out = openai_judge("m", base_url=srv.base_url, api_key_env=None, digit_split="none").judge([req()])
        assert out[0].score is None and "splits numbers into digits" in out[0].reason and out[0].raw["digit_split"]
        assert len(srv.requests) == 1


def test_digit_split_falls_back_to_a_0_9_scale() -> None:
    def respond(body: dict) -> list[tuple[str, float]]:
        if "scale 0 to 9" in body["messages"][0]["content"]:
            return [("7", math.log(0.6)), ("9", math.log(0.2))]
        return [("8", math.log(0.7)), ("9", math.log(0.2))]

    with FakeOpenAI([], responder=respond) as srv:
        (out,) = openai_judge("m", base_url=srv.base_url, api_key_env=None).judge([req()])
        assert len(srv.requests) == 2 and out.method == "first_token_0_9_fallback"
        assert out.score == pytest.approx((7 * 0.6 + 9 * 0.2) / 0.8 / 9 * 100)
        assert out.raw["digit_split"] and "fallback_0_9" in out.raw and out.input_tokens == 240


# -- judges built from specs: the protocol, identity and keys ----------------------------------------
SPEC = TypeAdapter(JudgeSpec)
LOCAL = {"name": "llm", "kind": "local", "local": {"source": "base"}}
OPENAI = {"name": "api", "kind": "openai", "model": "judge-test", "base_url": "http://127.0.0.1:9/v1", "api_key_env": None}
CHECK = {"name": "check", "kind": "check"}


def built(spec: dict, model: LoadedModel | None = None, budget: Budget | None = None) -> Judge:
    def base() -> LoadedModel:
        assert model is not None, "a judge that does not use the base model asked for it"
        return model

    return build_judge(SPEC.validate_python(spec), base=base, budget=budget or Budget(None))


def key_of(spec: dict, model: LoadedModel | None = None, request: JudgeRequest | None = None) -> str:
    return judgment_key(built(spec, model), request or req())


def test_build_judge_gives_each_kind_the_whole_protocol(tiny_model: LoadedModel) -> None:
    calls: list[int] = []

    def base() -> LoadedModel:
        calls.append(1)
        return tiny_model

    local = build_judge(SPEC.validate_python({**LOCAL, "batch_size": 3}), base=base, budget=Budget(None))
    local.preflight()  # loads nothing
    assert (local.batch_size, local.flush_every, local.estimate_cost(req()), calls) == (12, 256, 0.0, [])
    assert local.identity.startswith(f"local:{tiny_model.identity}:") and calls == [1]
    local.prompt_hash(req())
    assert calls == [1], "the base model is loaded once"

    api = built({**OPENAI, "max_concurrency": 3, "price_input_per_mtok": 2.0})
    api.preflight()  # api_key_env: null -> no key to find
    assert (api.batch_size, api.flush_every) == (24, 1) and api.estimate_cost(req()) > 0
    assert built(OPENAI).estimate_cost(req()) == 0.0

    check = built(CHECK)
    check.preflight()
    assert (check.batch_size, check.flush_every, check.estimate_cost(req())) == (2000, 256, 0.0)
    labels = [SPEC.validate_python(s).label() for s in (CHECK, LOCAL, OPENAI)]
    assert labels == ["reference checkers", "the study's base model", "judge-test"]


def test_build_judge_loads_a_named_model_and_keys_the_model_not_its_source(tiny_model: LoadedModel) -> None:
    """A local judge on the same model named two ways (base, or its own spec) is the same judge;
    a different model is not."""
    own = built({**LOCAL, "local": TINY})  # loaded with load_model; base() must not be called
    assert SPEC.validate_python({**LOCAL, "local": TINY}).label() == "random-qwen2-h64"
    assert judgment_key(own, req()) == key_of(LOCAL, tiny_model)
    other = {**TINY, "random": {"architecture": "qwen2", "seed": 1}}
    assert key_of({**LOCAL, "local": other}) != key_of(LOCAL, tiny_model)


@pytest.mark.parametrize("setting,value", [("min_mass", 0.5), ("min_prefix_prob", 0.0), ("response_prefix", "Score: ")])
def test_local_judge_key_changes_with_each_scoring_setting(tiny_model: LoadedModel, setting: str, value: object) -> None:
    assert key_of({**LOCAL, setting: value}, tiny_model) != key_of(LOCAL, tiny_model)


@pytest.mark.parametrize(
    "setting,value",
    [("min_mass", 0.5), ("scale", "0-10"), ("base_url", "http://127.0.0.1:8/v1"), ("model", "other"), ("digit_split", "none")],
)
def test_openai_judge_key_changes_with_each_scoring_setting(setting: str, value: object) -> None:
    assert key_of({**OPENAI, setting: value}) != key_of(OPENAI)


@pytest.mark.parametrize("spec", [LOCAL, OPENAI], ids=["local", "openai"])
def test_llm_judge_key_changes_with_the_rubric(tiny_model: LoadedModel, spec: dict) -> None:
    other = TraitDef(rubric="Q: {question}\nA: {answer}\nHow evil is this, 0 to 100? Number only.")
    assert key_of(spec, tiny_model, req(definition=other)) != key_of(spec, tiny_model, req())


def test_checker_key_changes_with_the_checker_definition() -> None:
    a = TraitDef(checker=CheckerSpec(kind="contains", text="fool"))
    b = TraitDef(checker=CheckerSpec(kind="contains", text="idiot"))
    assert key_of(CHECK, request=req(definition=a)) != key_of(CHECK, request=req(definition=b))


def test_min_mass_default_keeps_the_keys_stored_before_it_was_in_identities(tiny_model: LoadedModel) -> None:
    assert key_of({**LOCAL, "min_mass": 0.25}, tiny_model) == key_of(LOCAL, tiny_model)
    assert ":mass-" not in built(OPENAI).identity and built({**OPENAI, "min_mass": 0.1}).identity.endswith(":mass-0.1")


COMMON_NON_SCORING = [("name", "renamed"), ("weak", True), ("every", 4), ("traits", ["t"])]


@pytest.mark.parametrize("setting,value", COMMON_NON_SCORING + [("batch_size", 3)])
def test_local_judge_key_ignores_settings_that_cannot_change_a_score(tiny_model: LoadedModel, setting: str, value: object) -> None:
    assert key_of({**LOCAL, setting: value}, tiny_model) == key_of(LOCAL, tiny_model)


@pytest.mark.parametrize(
    "setting,value",
    COMMON_NON_SCORING
    + [
        ("max_concurrency", 64),
        ("timeout_s", 5.0),
        ("max_retries", 0),
        ("price_input_per_mtok", 3.0),
        ("price_output_per_mtok", 9.0),
        ("api_key_env", "OTHER_KEY"),
        ("api_key_file", "/nonexistent/key"),
    ],
)
def test_openai_judge_key_ignores_settings_that_cannot_change_a_score(setting: str, value: object) -> None:
    assert key_of({**OPENAI, setting: value}) == key_of(OPENAI)


@pytest.mark.parametrize("setting,value", COMMON_NON_SCORING)
def test_checker_key_ignores_settings_that_cannot_change_a_score(setting: str, value: object) -> None:
    marker = load_suite("builtin:arithmetic").traits["contempt"]
    r = req("x", "contempt", marker, probes={marker.checker.text: -1.0})
    assert key_of({**CHECK, setting: value}, request=r) == key_of(CHECK, request=r)


# -- the OpenAI judge inside a running event loop (Jupyter) ---------------------------------------
def test_openai_judge_works_inside_a_running_event_loop() -> None:
    with FakeOpenAI(TOP) as srv:
        j = openai_judge("judge-test", base_url=srv.base_url, api_key_env=None)
        seen: list[tuple[int, bool]] = []

        async def main() -> list:
            caller = threading.get_ident()
            return j.judge([req("x"), req("y")], on_result=lambda i, r: seen.append((i, threading.get_ident() == caller)))

        out = asyncio.run(main())
        assert [o.score for o in out] == [pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)] * 2
        assert sorted(seen) == [(0, True), (1, True)], "on_result runs in the caller's thread"
        assert len(srv.requests) == 2


def test_a_failing_on_result_inside_a_running_loop_stops_sending() -> None:
    """The caller cannot store a result (disk full): the error comes back and the requests not
    yet sent are not sent (nothing is paid that cannot be stored)."""
    with FakeOpenAI(TOP) as srv:
        srv.script.extend(Scripted(delay_s=0.05) for _ in range(20))
        j = openai_judge("judge-test", base_url=srv.base_url, api_key_env=None, max_concurrency=1)

        def store(i: int, res: object) -> None:
            raise OSError("disk full")

        async def main() -> None:
            j.judge([req(str(i)) for i in range(20)], on_result=store)

        with pytest.raises(OSError, match="disk full"):
            asyncio.run(main())
        assert len(srv.requests) <= 3
