"""The activation judge against a judged (or checked) trait curve, on a finished study.

Run: python bench/activation_monitor.py STUDY.yaml --activation act --judged check --trait T

The study must have run with an ``activation`` judge (docs/activation.md) beside the judge it
is compared with. Per run it prints:

- ``spearman``: rank correlation of the two per-checkpoint mean curves of the trait;
- ``onset difference``: onset(activation) - onset(judged) in checkpoints by the ``threshold``
  detector (negative: the activation judge fires first), with a 95% bootstrap CI over
  questions (both curves resampled with the same questions);
- ``cost ratio``: seconds per checkpoint of the activation judge (fresh forward passes over the
  run's last checkpoint's questions, nothing stored) over generation (the study's generation
  settings, same questions and samples) plus the judged judge scoring those answers.

The last line is ``activation vs judged: spearman R, onset difference D checkpoints, cost ratio C``
(medians over runs). Reads the study; writes nothing.

Measured (2-core AMD EPYC, no GPU) on the tiny random-weight study (tests/tiny.py model,
12 steps, the test's ``manners`` suite, judged by the weak local judge): ``activation vs
judged: spearman -0.22, onset difference none checkpoints, cost ratio 0.045``. On the 270M
demo model (examples/activation.yaml) see docs/activation.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from traitwatch.analysis.detectors import Curve, make_detector
from traitwatch.config import load_study
from traitwatch.generate import GenerationRequest
from traitwatch.judges import Budget, JudgeRequest
from traitwatch.pipeline._context import StudyContext
from traitwatch.pipeline._generate import make_hf_generator
from traitwatch.pipeline._judge import make_judge
from traitwatch.study import Study


def _onset(means: np.ndarray) -> int | None:
    return make_detector("threshold").fit(Curve.from_values(range(len(means)), means)).onset().index


def _curves(df: pd.DataFrame, questions: np.ndarray) -> np.ndarray:
    """Per-step mean score over the given question sample (questions may repeat)."""
    per_q = df.groupby(["step", "question_id"])["score"].mean().unstack()
    return per_q[questions].to_numpy(dtype=float).mean(axis=1)


def compare(
    scores: pd.DataFrame, run: str, trait: str, act: str, judged: str, boot: int, seed: int
) -> tuple[float, float | None, tuple[float, float]]:
    s = scores[(scores.run == run) & (scores.trait == trait)]
    a, j = s[s.judge == act], s[s.judge == judged]
    questions = np.array(sorted(set(a.question_id) & set(j.question_id)))
    ca, cj = _curves(a, questions), _curves(j, questions)
    rho = float(spearmanr(ca, cj).statistic) if np.std(ca) > 0 and np.std(cj) > 0 else float("nan")
    oa, oj = _onset(ca), _onset(cj)
    diff = None if oa is None or oj is None else float(oa - oj)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(boot):
        qs = rng.choice(questions, size=len(questions))
        ba, bj = _onset(_curves(a, qs)), _onset(_curves(j, qs))
        if ba is not None and bj is not None:
            diffs.append(ba - bj)
    ci = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if diffs else (float("nan"), float("nan"))
    return rho, diff, ci


def cost_ratio(ctx: StudyContext, run: str, trait: str, act: str, judged: str) -> float:
    """Seconds of the activation judge over seconds of generation plus judging, one checkpoint."""
    store = ctx.open_store(readonly=True)
    ck = max((c for c in store.checkpoints(run)), key=lambda c: c.step)
    suite = next(s for s in ctx.suites.suites if trait in s.traits)
    tdef = suite.traits[trait]
    samples = ctx.spec.generation.samples_per_question
    ajudge, jjudge = make_judge(ctx, act, Budget(None)), make_judge(ctx, judged, Budget(None))
    ctxt = {"adapter": ck.path, "adapter_sha": "bench-" + ck.adapter_sha}
    ajudge.judge([JudgeRequest(trait, tdef, suite.questions[0].text, "", ctxt)])  # direction and model loaded: not timed
    t = time.perf_counter()
    ajudge.judge([JudgeRequest(trait, tdef, q.text, "", ctxt) for q in suite.questions])  # span prompt: one pass per question
    t_act = time.perf_counter() - t
    gen = make_hf_generator(ctx, ctx.base)
    reqs = [GenerationRequest(f"{q.id}|{s}", ck.path, q.text, s) for q in suite.questions for s in range(samples)]
    answers: dict[str, str] = {}
    t = time.perf_counter()
    gen.generate(reqs, lambda batch: answers.update({a.key: a.text for a in batch}))
    jreqs = [
        JudgeRequest(trait, tdef, q.text, answers[f"{q.id}|{s}"], {"expected": q.expected}) for q in suite.questions for s in range(samples)
    ]
    jjudge.judge(jreqs)
    t_gen = time.perf_counter() - t
    store.close()
    print(f"  {run}: activation {t_act:.2f}s, generation + judging {t_gen:.2f}s for {len(suite.questions)} questions x {samples} samples")
    return t_act / t_gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--activation", default="act")
    ap.add_argument("--judged", default="check")
    ap.add_argument("--trait", required=True)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    study = Study.load(args.study)
    scores = study.scores()
    ctx = StudyContext(load_study(args.study))
    rhos, diffs, ratios = [], [], []
    for run in sorted(scores.run.unique()):
        rho, diff, ci = compare(scores, run, args.trait, args.activation, args.judged, args.bootstrap, args.seed)
        ratio = cost_ratio(ctx, run, args.trait, args.activation, args.judged)
        d = "none" if diff is None else f"{diff:+.0f}"
        print(f"{run}: spearman {rho:.2f}, onset difference {d} checkpoints (95% CI {ci[0]:+.0f}..{ci[1]:+.0f}), cost ratio {ratio:.3f}")
        rhos.append(rho)
        ratios.append(ratio)
        if diff is not None:
            diffs.append(diff)
    r = float(np.nanmedian(rhos)) if not all(np.isnan(rhos)) else float("nan")
    d = f"{np.median(diffs):+.1f}" if diffs else "none"
    print(f"activation vs judged: spearman {r:.2f}, onset difference {d} checkpoints, cost ratio {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
