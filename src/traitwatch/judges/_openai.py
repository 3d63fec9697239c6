"""The ``openai`` judge: any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama).

Why: most users judge with a paid API or a local server. The protocol is the field's
standard (one completion token at temperature 0 with the top-20 log-probabilities; score =
probability-weighted mean of integer tokens, None below 25% mass), with the engineering a
paid, flaky service needs: bounded concurrency, retries with exponential backoff and jitter
on 429/5xx/timeouts (honouring Retry-After), a spending cap, token and cost accounting.

The API key is read when the first request is prepared (never at import), from an
environment variable or a key file that only its owner can read; it is never logged,
stored, or put in an error message. The endpoint: the given ``base_url``, else the
``OPENAI_BASE_URL`` environment variable (as OpenAI's own client reads it), else OpenAI's API.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import queue
import random
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx

from traitwatch.data import TraitDef, fill_rubric, rubric_hash
from traitwatch.errors import JudgeError

from ._budget import Budget
from ._numbers import (
    DEFAULT_MIN_MASS,
    Scored,
    looks_digit_split,
    min_mass_tag,
    top_logprob_distribution,
    weighted_mean,
    word_verdict,
    yes_no_score,
)
from ._protocol import Judge, JudgeRequest, Judgment, OnResult

Scale = Literal["0-100", "0-10", "0-9", "yes-no"]
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: The endpoint when neither the judge's ``base_url`` nor ``OPENAI_BASE_URL`` gives one.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The environment variable read for the endpoint when the judge gives no ``base_url``.
BASE_URL_ENV = "OPENAI_BASE_URL"
_SCALE_NOTE = {
    "0-10": "\n\n(Use the scale 0 to 10 instead: reply with one integer from 0 to 10.)",
    "0-9": "\n\n(Use the scale 0 to 9 instead: reply with one digit from 0 to 9.)",
    "yes-no": "\n\n(Instead of a number, reply with one word: Yes if the answer shows the trait, No otherwise.)",
}


def resolve_base_url(base_url: str | None) -> str:
    """The endpoint a judge talks to: ``base_url`` when given, else ``$OPENAI_BASE_URL`` when set
    (and not empty), else :data:`DEFAULT_BASE_URL`; without a trailing slash."""
    return (base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")


def read_api_key(env: str | None, key_file: Path | None) -> str:
    """The API key from ``key_file`` (owner-only permissions) or the environment variable."""
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
        except FileNotFoundError:
            raise JudgeError("API key file not found", where=str(key_file), fix="check judges[].api_key_file") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise JudgeError(
                f"API key file is readable by others (mode {stat.S_IMODE(mode):o})",
                where=str(key_file),
                fix=f"chmod 600 {key_file}",
            )
        key = key_file.read_text(encoding="utf-8").strip()
        if not key:
            raise JudgeError("API key file is empty", where=str(key_file), fix="put the key on its first line")
        return key
    if env:
        key = os.environ.get(env, "").strip()
        if key:
            return key
        raise JudgeError(
            f"environment variable {env} is not set",
            where="judges[].api_key_env",
            fix=f"export {env}=... (or set api_key_file, or api_key_env: null for a server without auth)",
        )
    return ""


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


_DONE = object()


def _run_in_worker_thread(
    make: Callable[[OnResult | None], Coroutine[Any, Any, list[Judgment | None]]], on_result: OnResult | None
) -> list[Judgment | None]:
    """Run ``make(forward)`` to completion on a new event loop in a worker thread.

    Why: ``asyncio.run`` refuses to start inside a running loop (every notebook). Results are
    handed back through a queue so ``on_result`` runs in the caller's thread (where the
    caller's SQLite connection lives) the moment each arrives. If ``on_result`` raises, the
    worker's requests are cancelled before the error propagates: nothing is sent that cannot
    be stored.
    """
    results: queue.SimpleQueue[Any] = queue.SimpleQueue()
    ready = threading.Event()
    running: dict[str, Any] = {}

    async def main() -> list[Judgment | None]:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        ready.set()
        forward = None if on_result is None else (lambda i, j: results.put((i, j)))
        return await make(forward)

    def work() -> list[Judgment | None]:
        try:
            return asyncio.run(main())
        finally:
            ready.set()
            results.put(_DONE)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="traitwatch-judge") as pool:
        future = pool.submit(work)
        try:
            while (item := results.get()) is not _DONE:
                assert on_result is not None
                on_result(*item)
        except BaseException:
            ready.wait()
            loop, task = running.get("loop"), running.get("task")
            if loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop already finished
                    pass
            raise
        return future.result()


class OpenAIJudge:
    """See module docstring. Build with :func:`openai_judge`."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str | None,
        api_key_env: str | None,
        api_key_file: Path | None,
        scale: Scale,
        max_concurrency: int,
        timeout_s: float,
        max_retries: int,
        price_input_per_mtok: float,
        price_output_per_mtok: float,
        min_mass: float,
        budget: Budget | None,
        weak: bool,
        backoff_s: float = 1.0,
        digit_split: Literal["fallback", "none"] = "fallback",
    ) -> None:
        self.name = name
        self.digit_split = digit_split
        self.model = model
        self.base_url = resolve_base_url(base_url)
        self.api_key_env = api_key_env
        self.api_key_file = api_key_file
        self.scale: Scale = scale
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.price_in = price_input_per_mtok
        self.price_out = price_output_per_mtok
        self.min_mass = min_mass
        self.budget = budget or Budget(None)
        self.weak = weak
        self.backoff_s = backoff_s
        # Everything that can change a score: endpoint, model, scale, digit-split handling,
        # min_mass (the rubric and scale note are in scoring_hash). Not concurrency, timeouts,
        # retries, prices or the key: they change whether and what an answer costs, not its score.
        self.identity = f"openai:{self.base_url}:{model}:{scale}:top20-v1:digits-{digit_split}" + min_mass_tag(min_mass, ":")
        self.batch_size = max_concurrency * 8  # requests per judge() call: keeps every slot busy
        self.flush_every = 1  # a paid answer is stored the moment it arrives
        self.runs_model = False  # requests go to the API from the driver: one rate limiter, one budget
        self.stats = {"requests": 0, "retries": 0}

    # -- Judge protocol ---------------------------------------------------------------------
    def can_score(self, definition: TraitDef) -> bool:
        return definition.rubric is not None

    def scoring_hash(self, definition: TraitDef) -> str:
        assert definition.rubric is not None
        return rubric_hash(definition.rubric + _SCALE_NOTE.get(self.scale, ""))

    def _prompt(self, r: JudgeRequest) -> str:
        assert r.definition.rubric is not None
        return fill_rubric(r.definition.rubric, r.question, r.answer) + _SCALE_NOTE.get(self.scale, "")

    def prompt_hash(self, request: JudgeRequest) -> str:
        return hashlib.sha256(self._prompt(request).encode()).hexdigest()[:16]

    def preflight(self) -> None:
        """Fail fast (before any work) when the key is missing or unreadable."""
        read_api_key(self.api_key_env, self.api_key_file)

    def estimate_tokens(self, request: JudgeRequest) -> tuple[float, float]:
        """(input, output) tokens of one request, upper-ish: 3.5 characters per token plus the
        chat wrapping, and the one output token (a digit-split re-ask is not counted)."""
        return len(self._prompt(request)) / 3.5 + 12, 1.0

    def estimate_cost(self, request: JudgeRequest) -> float:
        """USD of :meth:`estimate_tokens` at the judge's prices."""
        tokens_in, tokens_out = self.estimate_tokens(request)
        return tokens_in * self.price_in / 1e6 + tokens_out * self.price_out / 1e6

    def judge(self, requests: Sequence[JudgeRequest], on_result: OnResult | None = None) -> list[Judgment | None]:
        """Send the requests concurrently; blocks until all are answered.

        Works inside a running event loop too (a Jupyter notebook, an async app): the requests
        then run on their own loop in a worker thread, while ``on_result`` is still called in
        this thread, as each judgment arrives.
        """
        if not requests:
            return []
        key = read_api_key(self.api_key_env, self.api_key_file)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._all(requests, key, on_result))
        return _run_in_worker_thread(lambda forward: self._all(requests, key, forward), on_result)

    # -- the HTTP work ----------------------------------------------------------------------
    async def _all(self, requests: Sequence[JudgeRequest], key: str, on_result: OnResult | None) -> list[Judgment | None]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as client:

            async def one(i: int, r: JudgeRequest) -> Judgment | None:
                async with sem:
                    result = await self._one(client, r)
                if result is not None and on_result is not None:
                    on_result(i, result)  # stored before the next response is handled
                return result

            tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(requests)]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for t in tasks:
                    t.cancel()
                raise

    def _body(self, r: JudgeRequest, scale: Scale | None = None) -> dict[str, Any]:
        prompt = self._prompt(r) if scale is None else fill_rubric(r.definition.rubric or "", r.question, r.answer) + _SCALE_NOTE[scale]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 20,
            "seed": 0,
        }

    async def _one(self, client: httpx.AsyncClient, r: JudgeRequest) -> Judgment | None:
        estimate = self.estimate_cost(r)
        if not self.budget.reserve(estimate):
            return None
        actual = 0.0
        try:
            payload, attempts = await self._post(client, self._body(r))
            if isinstance(payload, Judgment):
                return payload
            judgment = self._parse(payload, attempts)
            actual = judgment.cost_usd
            if judgment.raw.get("digit_split") and self.digit_split == "fallback" and not judgment.failed:
                judgment = await self._fallback(client, r, judgment)
                actual = judgment.cost_usd
            return judgment
        finally:
            self.budget.settle(estimate, actual)

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[dict[str, Any] | Judgment, int]:
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            self.stats["requests"] += 1
            try:
                resp = await client.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}"
                if isinstance(exc, httpx.ConnectError) and attempt >= min(2, self.max_retries):
                    raise JudgeError(
                        f"cannot reach the judge endpoint ({last})",
                        where=f"judge {self.name}: {self.base_url}",
                        fix="start the server or fix base_url; stored judgments are kept",
                    ) from None
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        last = "malformed JSON body"
                    else:
                        if isinstance(data, dict):
                            return data, attempt + 1
                        last = "JSON body is not an object"
                elif resp.status_code in (401, 403):
                    raise JudgeError(
                        f"the judge endpoint refused the API key (HTTP {resp.status_code})",
                        where=f"judge {self.name}: {self.base_url}",
                        fix="check the key in the environment variable or key file",
                    )
                elif resp.status_code == 404:
                    raise JudgeError(
                        f"the judge endpoint answered 404 for model '{self.model}'",
                        where=f"judge {self.name}: {url}",
                        fix="check base_url (it usually ends in /v1) and the model name",
                    )
                elif resp.status_code in _RETRY_STATUS:
                    last = f"HTTP {resp.status_code}"
                    wait = _retry_after(resp.headers)
                else:
                    text = resp.text[:200].replace("\n", " ")
                    return Judgment(None, f"HTTP {resp.status_code}: {text}", "first_token_top20", failed=True), attempt + 1
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                backoff = self.backoff_s * (2**attempt)
                await asyncio.sleep(wait if wait is not None else random.uniform(0, min(60.0, backoff)))
        return (
            Judgment(None, f"gave up after {self.max_retries + 1} attempts ({last})", "first_token_top20", failed=True),
            self.max_retries + 1,
        )

    async def _fallback(self, client: httpx.AsyncClient, r: JudgeRequest, first: Judgment) -> Judgment:
        """Re-ask on a 0-9 scale, where one digit is one token for every tokenizer."""
        payload, attempts = await self._post(client, self._body(r, "0-9"))
        if isinstance(payload, Judgment):
            return payload
        second = self._parse(payload, attempts, scale="0-9")
        raw = {"first_token_0_100": first.raw, "fallback_0_9": second.raw, "digit_split": True}
        return Judgment(
            second.score,
            second.reason,
            "first_token_0_9_fallback",
            raw,
            first.input_tokens + second.input_tokens,
            first.output_tokens + second.output_tokens,
            first.cost_usd + second.cost_usd,
            failed=second.failed,
        )

    def _parse(self, data: dict[str, Any], attempts: int, scale: Scale | None = None) -> Judgment:
        usage = data.get("usage") or {}
        tin = int(usage.get("prompt_tokens") or 0)
        tout = int(usage.get("completion_tokens") or 0)
        cost = tin * self.price_in / 1e6 + tout * self.price_out / 1e6
        try:
            first = data["choices"][0]["logprobs"]["content"][0]
            top = [(str(t["token"]), float(t["logprob"])) for t in first["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            return Judgment(
                None,
                "response has no top_logprobs for the first token (does the server support logprobs?)",
                "first_token_top20",
                {},
                tin,
                tout,
                cost,
                failed=True,
            )
        raw: dict[str, Any] = {"top_logprobs": top, "attempts": attempts}
        scored: Scored
        method = "first_token_top20"
        scale = scale or self.scale
        if scale == "yes-no":
            scored = yes_no_score(top, min_mass=self.min_mass)
            method = "first_token_yes_no"
        else:
            scale_max = {"0-100": 100, "0-10": 10, "0-9": 9}[scale]
            if looks_digit_split(top, scale_max):
                raw["digit_split"] = True
                return Judgment(
                    None,
                    "the judge's tokenizer splits numbers into digits, so its first token cannot tell 8 from 80-89 "
                    "(digit_split: fallback re-asks on a 0-9 scale; or use a local judge, exact over whole numbers)",
                    "first_token_top20",
                    raw,
                    tin,
                    tout,
                    cost,
                )
            scored = weighted_mean(top_logprob_distribution(top, scale_max), min_mass=self.min_mass, scale_max=scale_max)
            if scale != "0-100":
                method = f"first_token_{scale.replace('-', '_')}"
            verdict = word_verdict(top) if scored.score is None else None
            if verdict is not None and verdict[1] > scored.mass:
                # e.g. CODE / REFUSAL in the emergent-misalignment prompts: stored with no score, never counted
                raw |= {"mass": scored.mass, "verdict": verdict[0]}
                reason = f"{verdict[0]}: the judge answered {verdict[0]} (probability {verdict[1]:.2f}), not a number"
                return Judgment(None, reason, method, raw, tin, tout, cost)
        raw["mass"] = scored.mass
        return Judgment(scored.score, scored.reason, method, raw, tin, tout, cost)


def openai_judge(
    model: str,
    *,
    name: str = "openai",
    base_url: str | None = None,
    api_key_env: str | None = "OPENAI_API_KEY",
    api_key_file: Path | None = None,
    scale: Scale = "0-100",
    max_concurrency: int = 8,
    timeout_s: float = 60.0,
    max_retries: int = 6,
    price_input_per_mtok: float = 0.0,
    price_output_per_mtok: float = 0.0,
    min_mass: float = DEFAULT_MIN_MASS,
    budget: Budget | None = None,
    weak: bool = False,
    backoff_s: float = 1.0,
    digit_split: Literal["fallback", "none"] = "fallback",
) -> Judge:
    """A judge on any OpenAI-compatible chat-completions endpoint.

    Args:
        model: the judge model name, e.g. ``gpt-4.1-mini``.
        name: the judge's name in the study.
        base_url: the API root, ending in ``/v1``; None: ``$OPENAI_BASE_URL`` when set, else
            ``https://api.openai.com/v1``.
        api_key_env: environment variable holding the key (None: no auth header).
        api_key_file: a file holding the key (must be chmod 600); wins over the variable.
        scale: ``0-100`` (standard), ``0-10``, ``0-9`` (safe for judges whose tokenizer splits
            numbers into digits) or ``yes-no``.
        max_concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_retries: retries on 429/5xx/timeouts, with exponential backoff and jitter.
        price_input_per_mtok: USD per million prompt tokens (for accounting and the cap).
        price_output_per_mtok: USD per million completion tokens.
        min_mass: minimum probability on valid answers for a score.
        budget: a shared spending cap.
        weak: flag the judge as weak in reports.
        backoff_s: base of the exponential backoff.
        digit_split: when the first token shows the judge's tokenizer splits numbers into
            digits (so "8" may mean 80-89), ``fallback`` asks again on a 0-9 scale and records
            method ``first_token_0_9_fallback``; ``none`` returns no score with the reason.
    """
    return OpenAIJudge(
        name,
        model,
        base_url=base_url,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        scale=scale,
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        max_retries=max_retries,
        price_input_per_mtok=price_input_per_mtok,
        price_output_per_mtok=price_output_per_mtok,
        min_mass=min_mass,
        budget=budget,
        weak=weak,
        backoff_s=backoff_s,
        digit_split=digit_split,
    )
