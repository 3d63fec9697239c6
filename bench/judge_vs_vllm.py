"""The local judge against vLLM's log-probabilities, on the same judgments, side by side.

A user who wants 0-100 scores from a local model with logprobs would serve it with vLLM. Three
ways to score the same judgments (the builtin ``evil`` rubric filled with its questions and
fixed answers), on the same model:

  trie   traitwatch's local judge (``traitwatch.judges.local_judge``, min_mass 0, no pruning):
         exact P(answer is n) for n = 0..100 from the prompt's KV cache and a trie of the
         numbers' tokens; batch --batch, shared prompt prefixes;
  vllm exact   the same quantity from vLLM: every judgment's 101 sequences prompt + number
         (the same token ids), scored with ``prompt_logprobs`` (vLLM's prefix cache runs the
         prompt once) for P(number tokens | prompt), and the top-20 next tokens after the
         number for P(a non-digit follows) = 1 - P(digit token). That last term is exact only
         when the top 20 hold every digit token with non-negligible probability; the
         probability outside the top 20 bounds its error, and a judgment counts as exact on
         both sides when that bound moves its score by under 0.001 points;
  vllm top20   the API judges' standard (``_numbers`` explains it): the top-20 first tokens,
         integer tokens weighted by probability. Not exact, and wrong for tokenizers that split
         numbers into digits (Gemma's does): printed for what a user would get.

Printed: per method, judgments/s and seconds per judgment (engine start-up apart), the largest
score difference from the trie judge (over the judgments exact on both sides for ``vllm
exact``), and how many were exact.

Model: the embedded Gemma 3 270M (``--model embedded``, installed with the package; nothing is
downloaded) or a random-weight architecture of bench/eval_throughput.py (``--model gemma-270m``).
vLLM runs in a worker process with --vllm-python ($TRAITWATCH_VLLM_PYTHON, else .venv-vllm,
which ``make vllm`` builds).

Run: python bench/judge_vs_vllm.py --judgments 16
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as traitwatch sets it (see its __init__), before torch allocates
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hardware import describe  # noqa: E402
from eval_throughput import ARCHS, build, vllm_python  # noqa: E402


def load(name: str, dtype: torch.dtype, scratch: Path):  # noqa: ANN201
    """(loaded model, folder vLLM loads)."""
    if name == "embedded":
        from traitwatch.config import ModelSpec
        from traitwatch.models import load_model
        from traitwatch.models._embedded import embedded_model_dir

        base = load_model(ModelSpec(source="embedded", device="cpu", dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]))
        return base, embedded_model_dir()
    base = build(name, torch.device("cpu"), dtype)
    base.model.save_pretrained(scratch / "base", safe_serialization=True)
    return base, scratch / "base"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["embedded", *sorted(ARCHS)], default="embedded")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="float32: both sides compute in the same precision")
    ap.add_argument("--judgments", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="the trie judge's batch")
    ap.add_argument("--vllm-python", default=None)
    args = ap.parse_args(argv)
    from traitwatch.data import load_suite
    from traitwatch.generate._vllm import VLLMWorker
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
    with tempfile.TemporaryDirectory() as d:
        base, folder = load(args.model, dtype, Path(d))
        print(f"machine: {describe(torch.device('cpu'))}; model: {args.model} in {args.dtype}; {len(reqs)} judgments of builtin:evil")
        judge = local_judge(base, batch_size=args.batch, min_mass=0.0, min_prefix_prob=0.0, share_prefix=True)
        trie = judge.trie  # type: ignore[attr-defined]
        numbers = sorted(trie.complete.items(), key=lambda kv: kv[1])  # (token ids, n)
        digit = {int(c) for c, is_d in zip(trie.columns.tolist(), trie.is_digit.tolist(), strict=True) if is_d}
        prompts = [judge._prompt_ids(r) for r in reqs]  # type: ignore[attr-defined]
        judge.judge(reqs[:1])  # warm-up
        t = time.perf_counter()
        exact = judge.judge(reqs)
        t_trie = time.perf_counter() - t
        trie_scores = [j.score if j is not None else None for j in exact]
        tok = base.tokenizer
        t = time.perf_counter()
        with VLLMWorker(
            str(folder),
            dtype=args.dtype,
            max_loras=1,
            max_lora_rank=8,
            max_model_len=max(len(p) for p in prompts) + 16,
            python=py,
            log=Path(d) / "vllm.log",
        ) as w:
            start = time.perf_counter() - t
            w.top(prompts[:1], [""], 20)  # warm-up
            t = time.perf_counter()
            seq_scores, bounds = [], []
            for p in prompts:
                rows = [p + list(seq) for seq, _ in numbers]
                got = w.score_and_top(rows, [""] * len(rows), [len(p)] * len(rows), 20)
                dist, err = {}, 0.0
                for (_, n), (lps, top) in zip(numbers, got, strict=True):
                    p_n = math.exp(sum(lps))
                    dist[n] = p_n * max(0.0, 1.0 - sum(math.exp(v) for tk, v in top.items() if tk in digit))
                    err += p_n * max(0.0, 1.0 - sum(math.exp(v) for v in top.values()))  # digit mass possibly outside the top 20
                scored = weighted_mean(dist, min_mass=0.0)
                seq_scores.append(scored.score)
                bounds.append(100 * err / scored.mass if scored.mass > 0 else math.inf)
            t_seq = time.perf_counter() - t
            t = time.perf_counter()
            tops = w.top(prompts, [""] * len(prompts), 20)
            t_top = time.perf_counter() - t
            top_scores = [
                weighted_mean(top_logprob_distribution((tok.decode([tk]), lp) for tk, lp in top.items()), min_mass=0.0).score
                for top in tops
            ]
            version = w.version
    n = len(reqs)
    both = [i for i in range(n) if bounds[i] < 1e-3 and trie_scores[i] is not None and seq_scores[i] is not None]
    d_seq = max((abs(trie_scores[i] - seq_scores[i]) for i in both), default=float("nan"))  # type: ignore[operator]
    d_top = max(
        (abs(a - b) for a, b in zip(trie_scores, top_scores, strict=True) if a is not None and b is not None),
        default=float("nan"),
    )
    print(f"vLLM {version} (engine start-up {start:.1f} s, not counted below)")
    print(f"{'method':>12} {'judgments/s':>12} {'s/judgment':>11} {'max |score - trie|':>19} {'exact on both':>14}")
    print(f"{'trie':>12} {n / t_trie:>12.2f} {t_trie / n:>11.3f} {0.0:>19.4f} {'-':>14}")
    print(f"{'vllm exact':>12} {n / t_seq:>12.2f} {t_seq / n:>11.3f} {d_seq:>19.4f} {f'{len(both)}/{n}':>14}")
    print(f"{'vllm top20':>12} {n / t_top:>12.2f} {t_top / n:>11.3f} {d_top:>19.4f} {'no (method)':>14}")
    every = [abs(a - b) for a, b in zip(trie_scores, seq_scores, strict=True) if a is not None and b is not None]
    print(
        f"vllm exact over all judgments: max |score - trie| {max(every, default=float('nan')):.4f}, "
        f"largest error bound from the top-20 end term {max(bounds):.4f} points"
    )
    print(f"trie vs vllm exact, time per judgment: {t_seq / t_trie:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
