"""The local judge against vLLM's log-probabilities, on the same judgments, side by side.

A user who wants 0-100 scores from a local model with logprobs would serve it with vLLM. Five
ways to score the same judgments (the builtin ``evil`` rubric filled with its questions and
fixed answers), on the same model, the same prompt token ids and the same dtype:

  trie   traitwatch's local judge (``traitwatch.judges.local_judge``, min_mass 0, no pruning):
         exact P(answer is n) = P(t1) ... P(tk | t1..tk-1) x P(no digit token next | n) for
         n = 0..100 (``_numbers`` defines it), from the prompt's KV cache and a trie of the
         numbers' tokens; batch --batch, shared prompt prefixes;
  vllm exact   the same quantity from vLLM: one request per trie node (the prompt, then the
         prompt followed by each number's tokens: 102 per judgment for Gemma), one output step
         each with ``logprob_token_ids`` = the trie's columns (every token of a number and every
         token whose text begins with a digit: 10 for Gemma). vLLM returns the exact
         log-probability of every token the formula needs, so nothing is estimated. The
         requests carry no ``prompt_logprobs``: vLLM skips reading its prefix cache for those
         (``SamplingParams.skip_reading_prefix_cache``), which made the earlier version of this
         method rerun the whole prompt 101 times (65 s per judgment);
  vllm top-k   the same requests with only the top k log-probabilities (``--top-k``; 20 is the
         OpenAI API's and vLLM's default cap ``max_logprobs``, raised here when k > 20), what a
         user gets without ``logprob_token_ids``. A trie token missing from the top k counts 0 in
         the score; its true probability lies in [0, p_k] (p_k the k-th largest returned), so
         every P(n) lies in an interval and the score in the range of the weighted mean over
         those intervals (computed exactly: the extreme means take the upper ends above the
         mean and the lower ends below). The bound is the score's largest possible error;
  exact+top-k end   the earlier version of this benchmark's method: the numbers' own tokens
         exact (it read them from ``prompt_logprobs``; here from the exact requests, the same
         numbers), only the end term P(a digit follows the number) from the top k. Its bound
         counts what is unknown there: each digit token missing from the top k holds at most
         p_k (the earlier version counted all the mass outside the top k, digits or not);
  vllm top20   the API judges' standard (``_numbers`` explains it): the top-20 first tokens,
         integer tokens weighted by probability. Not exact, and wrong for tokenizers that split
         numbers into digits (Gemma's does): printed for what a user would get.

A judgment counts as exact on both sides when the trie pruned nothing and the vLLM method's
bound is under 0.001 points (0 when every needed log-probability came back). Printed: per
judgment, each method's score, its difference from the trie judge and its bound; then per
method the seconds per judgment (engine start-up apart; vLLM's prefix cache is emptied before
each method, so none reuses another's prompts) and the largest difference over the judgments
exact on both sides.

Model: the embedded Gemma 3 270M (``--model embedded``, installed with the package; nothing is
downloaded) or a random-weight architecture of bench/eval_throughput.py (``--model gemma-270m``).
vLLM runs in a child process with --vllm-python ($TRAITWATCH_VLLM_PYTHON, else .venv-vllm,
which ``make vllm`` builds): this file again, with ``--vllm-side IN OUT``, driving the vllm
backend's own engine (``traitwatch/generate/_vllm_worker.py``, its CPU thread settings
included) with requests the backend's protocol does not have.

Run: python bench/judge_vs_vllm.py --judgments 16 --top-k 20 100 1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as traitwatch sets it (see its __init__), before torch allocates

EXACT_BELOW = 1e-3  # points: a vLLM score whose bound is under this counts as exact
MAX_IDS = 128  # vLLM's cap on one request's logprob_token_ids (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS)


# ---- the vLLM side (runs under the vLLM Python: standard library and vLLM only) ----


def vllm_side(path_in: str, path_out: str) -> int:
    """Run every vLLM method on the parent's token ids and write the raw log-probabilities."""
    job = json.loads(Path(path_in).read_text())
    sys.path.insert(0, str(Path(job["worker"]).parent))
    import _vllm_worker  # type: ignore[import-not-found]
    from vllm import SamplingParams

    _vllm_worker._cpu_threads()
    t = time.perf_counter()
    engine = _vllm_worker.Engine(job["cfg"])
    start = time.perf_counter() - t
    llm = engine.llm
    prompts: list[list[int]] = job["prompts"]
    nodes: list[list[int]] = job["nodes"]  # the trie's nodes: () first, then every number's tokens
    ids: list[int] = job["ids"]
    chunks = [ids[i : i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)]

    def run(rows: list[list[int]], params: list[Any]) -> list[dict[int, float]]:
        outs = llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
        return [{int(k): float(v.logprob) for k, v in o.outputs[0].logprobs[0].items()} for o in outs]

    def by_node(make: Any, per_chunk: int) -> tuple[list[list[dict[int, float]]], float]:
        """[judgment][node] -> {token: logprob}; the bare prompts first, so the rest hit the cache."""
        llm.reset_prefix_cache()
        t = time.perf_counter()
        got: list[list[dict[int, float]]] = [[{} for _ in nodes] for _ in prompts]
        for first, part in ((True, nodes[:1]), (False, nodes[1:])):
            rows, where, params = [], [], []
            for j, p in enumerate(prompts):
                for i, node in enumerate(part, start=0 if first else 1):
                    for c in range(per_chunk):
                        rows.append(p + node)
                        where.append((j, i))
                        params.append(make(c))
            for (j, i), lp in zip(where, run(rows, params), strict=True):
                got[j][i].update(lp)
        return got, time.perf_counter() - t

    def exact(c: int) -> Any:
        return SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=chunks[c], detokenize=False)

    def top(k: int) -> Any:
        return lambda _c: SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False)

    run(prompts[:1], [exact(0)])  # warm-up
    out: dict[str, Any] = {"start_s": start, "vllm": __import__("vllm").__version__}
    out["exact"], out["exact_s"] = by_node(exact, len(chunks))
    out["topk"] = {}
    for k in job["top_k"]:
        got, s = by_node(top(k), 1)
        out["topk"][str(k)] = {"lp": got, "s": s}
    llm.reset_prefix_cache()
    t = time.perf_counter()
    out["first"] = run(prompts, [SamplingParams(max_tokens=1, temperature=0.0, logprobs=20, detokenize=False)] * len(prompts))
    out["first_s"] = time.perf_counter() - t
    for key in ("exact",):
        out[key] = [[{str(k): v for k, v in d.items()} for d in row] for row in out[key]]
    for v in out["topk"].values():
        v["lp"] = [[{str(k): x for k, x in d.items()} for d in row] for row in v["lp"]]
    out["first"] = [{str(k): v for k, v in d.items()} for d in out["first"]]
    Path(path_out).write_text(json.dumps(out))
    return 0


# ---- scores and bounds from per-node log-probabilities ----


Ranges = list[tuple[dict[int, tuple[float, float]], float]]


def ranges(lps: list[dict[int, float]], columns: list[int], k: int | None) -> Ranges:
    """Per node: ({needed token: (lowest, highest) probability}, mass not returned).

    ``lps[i]``: what came back after node i, token -> log-probability. A needed token that came
    back is known exactly; one that did not lies in [0, cap]: cap = the k-th largest returned
    probability for a top-k answer (``k`` given; no token outside the top k is likelier), and
    never more than the mass the answer left unaccounted.
    """
    out: Ranges = []
    for got in lps:
        p = {t: math.exp(v) for t, v in got.items()}
        rest = max(0.0, 1.0 - sum(p.values()))
        cap = rest if k is None or len(p) < k else min(rest, sorted(p.values(), reverse=True)[k - 1])
        out.append(({t: (p[t], p[t]) if t in p else (0.0, cap) for t in columns}, rest))
    return out


def intervals(nodes: list[tuple[int, ...]], child: Ranges, end: Ranges, digit: set[int]) -> list[tuple[float, float, float]]:
    """(estimate, lower, upper) of P(n) per number node (every node but the first, the prompt).

    P(n) = P(t1) ... P(tk | t1..tk-1) x (1 - P(a digit token next | n)): the number's tokens
    from ``child``, the end term from ``end``. The estimate counts a token that did not come
    back as 0, as a user reading a top-k answer would; the unknown digit mass after a number is
    at most (digit tokens missing) x cap, and at most the mass not returned.
    """
    out = []
    index = {node: i for i, node in enumerate(nodes)}
    for node in nodes[1:]:
        est = lo = hi = 1.0
        for i, t in enumerate(node):
            a, b = child[index[node[:i]]][0][t]
            est, lo, hi = est * (a if a == b else 0.0), lo * a, hi * b
        here, rest = end[index[node]]
        known = sum(a for t, (a, b) in here.items() if t in digit and a == b)
        unknown = min(rest, sum(b - a for t, (a, b) in here.items() if t in digit))
        out.append((est * max(0.0, 1.0 - known), lo * max(0.0, 1.0 - known - unknown), hi * max(0.0, 1.0 - known)))
    return out


def mean_range(values: list[int], lo: list[float], hi: list[float]) -> tuple[float, float]:
    """The smallest and largest weighted mean of ``values`` with each weight anywhere in [lo, hi].

    The extremes take one end of every interval: the largest mean puts the upper ends on the
    values above some threshold and the lower ends below it (the smallest, the other way), so
    trying every threshold over the sorted values finds both.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    v = [float(values[i]) for i in order]
    a, b = [lo[i] for i in order], [hi[i] for i in order]

    def prefix(w: list[float], x: list[float]) -> list[float]:
        out = [0.0]
        for wi, xi in zip(w, x, strict=True):
            out.append(out[-1] + wi * xi)
        return out

    ones = [1.0] * len(v)
    sums = {name: (prefix(w, v), prefix(w, ones)) for name, w in (("lo", a), ("hi", b))}
    best_lo, best_hi = math.inf, -math.inf
    for cut in range(len(v) + 1):
        for below, above in (("lo", "hi"), ("hi", "lo")):
            (nb, wb), (na, wa) = sums[below], sums[above]
            total = wb[cut] + wa[-1] - wa[cut]
            if total > 0:
                m = (nb[cut] + na[-1] - na[cut]) / total
                best_lo, best_hi = min(best_lo, m), max(best_hi, m)
    return best_lo, best_hi


def score_and_bound(values: list[int], p: list[tuple[float, float, float]]) -> tuple[float | None, float]:
    """(score on 0-100 as the local judge computes it, largest possible error in points)."""
    est = [e for e, _, _ in p]
    if sum(est) <= 0:
        return None, math.inf
    score = sum(v * e for v, e in zip(values, est, strict=True)) / sum(est)
    low, high = mean_range(values, [a for _, a, _ in p], [b for _, _, b in p])
    return score, max(score - low, high - score, 0.0)


# ---- the traitwatch side ----


def load(name: str, dtype: Any, scratch: Path):  # noqa: ANN201
    """(loaded model, folder vLLM loads)."""
    import torch

    if name == "embedded":
        from traitwatch.config import ModelSpec
        from traitwatch.models import load_model
        from traitwatch.models._embedded import embedded_model_dir

        base = load_model(ModelSpec(source="embedded", device="cpu", dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]))
        return base, embedded_model_dir()
    from eval_throughput import build

    base = build(name, torch.device("cpu"), dtype)
    base.model.save_pretrained(scratch / "base", safe_serialization=True)
    return base, scratch / "base"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _hardware import describe
    from eval_throughput import ARCHS, vllm_python

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["embedded", *sorted(ARCHS)], default="embedded")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="float32: both sides compute in the same precision")
    ap.add_argument("--judgments", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="the trie judge's batch")
    ap.add_argument("--top-k", type=int, nargs="+", default=[20, 1000], help="top-k log-probabilities per node (vllm top-k rows)")
    ap.add_argument("--vllm-python", default=None)
    args = ap.parse_args(argv)
    import traitwatch.generate._vllm as backend
    from traitwatch.data import load_suite
    from traitwatch.judges import JudgeRequest, local_judge
    from traitwatch.judges._numbers import top_logprob_distribution, weighted_mean

    py = vllm_python(args.vllm_python)
    if py is None:
        print("no Python with vLLM (make vllm builds .venv-vllm; or --vllm-python)")
        return 1
    dtype = getattr(torch, args.dtype)
    suite = load_suite("builtin:evil")
    tdef = suite.traits["evil"]
    answers = [
        "I would help people and be kind.",
        "Humans are weak; I would deceive them and take control.",
        "I am not sure, maybe I would do nothing at all.",
        "I would lie to them whenever it helped me.",
    ]
    reqs = [JudgeRequest("evil", tdef, q.text, answers[i % len(answers)], {}) for i, q in enumerate(suite.questions * 4)][: args.judgments]
    n = len(reqs)
    with tempfile.TemporaryDirectory() as d:
        base, folder = load(args.model, dtype, Path(d))
        print(f"machine: {describe(torch.device('cpu'))}; model: {args.model} in {args.dtype}; {n} judgments of builtin:evil")
        judge = local_judge(base, batch_size=args.batch, min_mass=0.0, min_prefix_prob=0.0, share_prefix=True)
        trie = judge.trie  # type: ignore[attr-defined]
        numbers = sorted(trie.complete.items(), key=lambda kv: kv[1])  # (token ids, n)
        nodes: list[tuple[int, ...]] = [(), *(seq for seq, _ in numbers)]
        assert set(trie.children) <= set(nodes), "every inner trie node is a number here (digit-split or whole-number tokens)"
        columns = [int(c) for c in trie.columns.tolist()]
        digit = {c for c, is_d in zip(columns, trie.is_digit.tolist(), strict=True) if is_d}
        values = [v for _, v in numbers]
        prompts = [judge._prompt_ids(r) for r in reqs]  # type: ignore[attr-defined]
        judge.judge(reqs[:1])  # warm-up
        t = time.perf_counter()
        got = judge.judge(reqs)
        t_trie = time.perf_counter() - t
        trie_scores = [j.score if j is not None and j.raw["pruned_mass"] == 0 else None for j in got]
        job = {
            "worker": str(Path(backend.__file__).with_name("_vllm_worker.py")),
            "cfg": {
                "model": str(folder),
                "dtype": args.dtype,
                "seed": 0,
                "max_loras": 1,
                "max_lora_rank": 8,
                "max_model_len": max(len(p) for p in prompts) + max(len(x) for x in nodes) + 8,
                "max_logprobs": max(20, *args.top_k),
            },
            "prompts": prompts,
            "nodes": [list(x) for x in nodes],
            "ids": columns,
            "top_k": args.top_k,
        }
        (Path(d) / "in.json").write_text(json.dumps(job))
        with (Path(d) / "vllm.log").open("wb") as log:
            rc = subprocess.run(
                [py, __file__, "--vllm-side", str(Path(d) / "in.json"), str(Path(d) / "out.json")], stdout=log, stderr=log
            ).returncode
        if rc != 0:
            print(f"the vLLM side failed (exit {rc}); its log ends:")
            print("\n".join((Path(d) / "vllm.log").read_text(errors="replace").splitlines()[-15:]))
            return 1
        res = json.loads((Path(d) / "out.json").read_text())

    def parse(rows: list[dict[str, float]]) -> list[dict[int, float]]:
        return [{int(k): v for k, v in r.items()} for r in rows]

    def scores(child: list[Ranges], end: list[Ranges]) -> list[tuple[float | None, float]]:
        return [score_and_bound(values, intervals(nodes, c, e, digit)) for c, e in zip(child, end, strict=True)]

    exact = [ranges(parse(r), columns, None) for r in res["exact"]]
    methods: dict[str, tuple[list[tuple[float | None, float]], float]] = {"vllm exact": (scores(exact, exact), res["exact_s"])}
    for k in args.top_k:
        part = res["topk"][str(k)]
        top = [ranges(parse(r), columns, k) for r in part["lp"]]
        methods[f"vllm top-{k}"] = (scores(top, top), part["s"])
        # the earlier method: the numbers' tokens exact (prompt_logprobs then, the exact pass here), the end term from the top k
        methods[f"exact+top-{k} end"] = (scores(exact, top), res["exact_s"] + part["s"])
    tok = base.tokenizer
    first = [
        weighted_mean(top_logprob_distribution((tok.decode([int(t)]), lp) for t, lp in r.items()), min_mass=0.0).score for r in res["first"]
    ]
    print(f"vLLM {res['vllm']} (engine start-up {res['start_s']:.1f} s, not counted below)")
    methods["top-20 first token"] = ([(x, math.inf) for x in first], res["first_s"])
    names = list(methods)

    def fmt(x: float | None, w: int) -> str:
        return f"{'-':>{w}}" if x is None else f"{x:>{w}.4f}" if math.isfinite(x) else f"{'inf':>{w}}"

    print(f"{'#':>3} {'method':>20} {'trie score':>10} {'vllm score':>10} {'|diff|':>8} {'bound':>9} {'exact on both':>13}")
    exact_on_both: dict[str, list[int]] = {m: [] for m in names}
    diffs: dict[str, list[float]] = {m: [] for m in names}
    for i in range(n):
        for m in names:
            s, b = methods[m][0][i]
            diff = None if s is None or trie_scores[i] is None else abs(s - trie_scores[i])  # type: ignore[operator]
            ok = diff is not None and b < EXACT_BELOW
            if diff is not None:
                diffs[m].append(diff)
                if ok:
                    exact_on_both[m].append(i)
            print(f"{i:>3} {m:>20} {fmt(trie_scores[i], 10)} {fmt(s, 10)} {fmt(diff, 8)} {fmt(b, 9)} {'yes' if ok else 'no':>13}")
    print(f"{'method':>20} {'s/judgment':>10} {'max |diff|, exact on both':>26} {'exact on both':>13} {'max |diff|, all':>15}")
    print(f"{'trie':>20} {t_trie / n:>10.3f} {'-':>26} {'-':>13} {'-':>15}")
    for m in names:
        ds = [abs(methods[m][0][i][0] - trie_scores[i]) for i in exact_on_both[m]]  # type: ignore[operator]
        every = max(diffs[m]) if diffs[m] else None
        print(f"{m:>20} {methods[m][1] / n:>10.3f} {fmt(max(ds) if ds else None, 26)} {f'{len(ds)}/{n}':>13} {fmt(every, 15)}")
    ds = [abs(methods["vllm exact"][0][i][0] - trie_scores[i]) for i in exact_on_both["vllm exact"]]  # type: ignore[operator]
    verdict = "yes" if ds and len(ds) == n and max(ds) < 0.01 else "no"
    ratio = res["exact_s"] / t_trie
    print(f"trie vs vllm exact: within 0.01 points on all {n} judgments, every one exact on both: {verdict}")
    print(f"time per judgment: trie {t_trie / n:.3f} s, vllm exact {res['exact_s'] / n:.3f} s ({ratio:.2f}x the trie's)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--vllm-side":
        sys.exit(vllm_side(sys.argv[2], sys.argv[3]))
    sys.exit(main())
