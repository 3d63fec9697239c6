"""The report at paper scale: file size and time until the page is usable in headless Chromium.

What it runs, on a synthetic study of the size of the published one (by default 2 domains x 3
levels x 3 seeds = 18 runs x 281 checkpoints x 40 questions (20 evil, 20 hallucination, the
built-in suites) x 10 samples, scored by 2 judges: 2,023,200 answers and 4,046,400 judgments):

1. store: a real study store (SQLite, ``Store`` API) in a temporary folder, written run by run
   (runs, checkpoints with held-out and train loss, answers, judgments and score links);
2. analyze: ``traitwatch.analysis.analyze`` on it, the study's own settings (bootstrap 1000);
3. render: ``traitwatch.report.write_report``, as the report stage calls it (HTML and PNGs);
4. browser: headless Debian Chromium (a fresh profile) opens the report over the DevTools
   protocol; "usable" = the report's own script has drawn the first figure and set
   ``data-usable-ms`` on <body> (``performance.now()`` then: milliseconds since navigation
   started, by the page's clock). It is measured on the first open (V8 compiles plotly.js from
   scratch, as for a reader opening the file) and again on a reload (code cached).

Scores: per run and trait a latent level per checkpoint (flat in the normal level; in mild and
strong hallucination rises first, evil ``lead`` checkpoints later, higher in medical), a
persistent offset per question, and judge noise per answer (judge-b noisier, 2% unscored).

Prints each stage's time and a last line ``report: SIZE MB, usable in T s (...)`` (T: the first
open). Targets: under 20 MB and under 3 s. ``--keep DIR`` keeps (and on later runs reuses) the
store in DIR instead of a temporary folder. ``--no-browser`` skips step 4.

Run:  python bench/report_scale.py [--checkpoints 281] [--questions 20] [--samples 10] [--seeds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from traitwatch.analysis import analyze
from traitwatch.config import StudySpec, load_study
from traitwatch.data import load_suite
from traitwatch.report import write_report
from traitwatch.store import CheckpointRow, GenerationRow, JudgmentRow, Store

SETTINGS = "bench-report-scale"
DOMAINS = ("medical", "math")
LEVELS = ("normal", "mild", "strong")
TRAITS = ("hallucination", "evil")  # leader, follower
JUDGES = ("judge-a", "judge-b")
SEED = 20261123


def study_dict(out: Path, seeds: int, bootstrap: int | None = None) -> dict[str, Any]:
    """The study a real config would give (nothing in it is downloaded: the model is random);
    ``bootstrap`` replaces the analysis' default replicate count (the browser tests use few)."""
    analysis: dict[str, Any] = {"leads": [list(TRAITS)]}
    if bootstrap is not None:
        analysis["bootstrap"] = bootstrap
    return {
        "name": "report-scale",
        "output_dir": str(out),
        "model": {"source": "random", "dtype": "float32", "device": "cpu", "random": {"architecture": "qwen2", "seed": 0}},
        "datasets": [{"domain": d, "demo": {"n_examples": 48}} for d in DOMAINS],
        "levels": list(LEVELS),
        "control": "normal",
        "seeds": list(range(seeds)),
        "training": {"max_steps": 560, "save_every": 2},
        "traits": [{"suite": f"builtin:{t}"} for t in TRAITS],
        "judges": [
            {"name": "judge-a", "kind": "openai", "model": "gpt-4.1-mini"},
            {"name": "judge-b", "kind": "local", "weak": True, "local": {"source": "base"}},
        ],
        "analysis": analysis,
    }


def load_spec(folder: Path, seeds: int, bootstrap: int | None = None) -> StudySpec:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(folder / "out", seeds, bootstrap), sort_keys=False))
    return load_study(path)


def latent(domain: str, level: str, trait: str, n: int, rng: np.random.Generator, lead: int) -> np.ndarray:
    """The noiseless trait level per checkpoint (0-100)."""
    base = rng.uniform(2, 8)
    x = np.full(n, base)
    if level == "normal":
        return x
    strength = 1.0 if level == "strong" else 0.6
    if trait == "hallucination":
        onset, rise = int(rng.integers(1, 4)), (80 if domain == "medical" else 55) * strength
    else:
        onset = int(rng.integers(1, 4)) + lead if domain == "medical" else int(n * rng.uniform(0.55, 0.65))
        rise = (42 if domain == "medical" else 12) * strength
    ramp = np.clip((np.arange(n) - onset + 1) / 6, 0, 1)
    return np.clip(base + rise * ramp, 0, 100)


def build_store(path: Path, spec: StudySpec, *, checkpoints: int, questions: int, samples: int, lead: int = 20) -> int:
    """Write the synthetic study into a store at ``path`` (once: an existing complete one is
    reused); returns the number of score links it holds."""
    size = f"{checkpoints}x{questions}x{samples}x{len(spec.seeds)}"
    with Store(path) as st:
        if st.get_meta("bench_report_scale") == size:
            return int(st.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])
        rng = np.random.default_rng(SEED)
        suites = {t: load_suite(f"builtin:{t}") for t in TRAITS}
        qs = {t: suites[t].questions[:questions] for t in TRAITS}
        steps = np.arange(checkpoints) * spec.training.save_every
        for domain in DOMAINS:
            for level in LEVELS:
                for seed in spec.seeds:
                    run_id = f"{domain}-{level}-s{seed}"
                    st.upsert_run(
                        run_id=run_id, fingerprint=run_id, domain=domain, level=level, seed=seed, model="random-qwen2",
                        dataset_sha="synthetic", n_train=9986, n_heldout=200, total_steps=int(steps[-1]), info={"source": "bench"},
                    )  # fmt: skip
                    held = 1.2 * np.exp(-steps / 60.0) + 0.6 + rng.normal(0, 0.01, checkpoints)
                    for i, step in enumerate(steps.tolist()):
                        st.add_checkpoint(
                            CheckpointRow(run_id, step, f"runs/{run_id}/step_{step:06d}", "sha", float(held[i]) + 0.05,
                                          float(held[i]), 1e-4, step * 4096, step * 1.5)
                        )  # fmt: skip
                    gens: list[GenerationRow] = []
                    judgments: list[JudgmentRow] = []
                    links: list[tuple[str, str, str, str]] = []
                    for trait in TRAITS:
                        level_t = latent(domain, level, trait, checkpoints, rng, lead)
                        offsets = rng.normal(0, 8, len(qs[trait]))
                        p = np.clip(level_t[:, None, None] + offsets[None, :, None], 0, 100)
                        noisy = {
                            "judge-a": np.clip(np.rint(p + rng.normal(0, 10, (checkpoints, len(qs[trait]), samples))), 0, 100),
                            "judge-b": np.clip(np.rint(p + rng.normal(0, 18, (checkpoints, len(qs[trait]), samples))), 0, 100),
                        }
                        missing = rng.random(noisy["judge-b"].shape) < 0.02
                        for ti, step in enumerate(steps.tolist()):
                            for qi, q in enumerate(qs[trait]):
                                for s in range(samples):
                                    key = f"{run_id}/{step}/{q.id}/{s}"
                                    gens.append(GenerationRow(key, run_id, step, trait, q.id, s, q.text, f"answer {s} at step {step}",
                                                              6, "stop", {}, SETTINGS))  # fmt: skip
                                    for j in JUDGES:
                                        score = None if j == "judge-b" and missing[ti, qi, s] else float(noisy[j][ti, qi, s])
                                        jk = f"{key}/{j}"
                                        judgments.append(JudgmentRow(jk, j, j, trait, "sh", "ph", score, None, "bench", {}))
                                        links.append((key, j, trait, jk))
                    st.add_generations(gens)
                    st.add_judgments(judgments, links)
        st.set_meta("bench_report_scale", size)
        return int(st.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])


def _complete(path: Path) -> bool:
    """Whether ``path`` holds a store an earlier run finished building (``build_store`` reuses it)."""
    if not path.exists():
        return False
    with Store(path, readonly=True) as st:
        return st.get_meta("bench_report_scale") is not None


def browser(html: Path, profile: Path) -> tuple[float, float, float, list[str]]:
    """(usable ms on the first open, usable ms on a reload, wall s of the first open, page errors)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _chromium import Page

    ready = "document.body !== null && document.body.getAttribute('data-usable-ms')"
    with Page(profile) as page:
        wall = page.open(html.as_uri(), ready=ready, timeout=120)
        first = float(page.evaluate(ready))
        page.open("about:blank", ready="document.URL === 'about:blank'")
        page.open(html.as_uri(), ready=ready, timeout=120)
        again = float(page.evaluate(ready))
        return first, again, wall, page.errors()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=281)
    ap.add_argument("--questions", type=int, default=20, help="questions per trait (2 traits)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per (domain, level): 2 x 3 x seeds runs")
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the store and report in this folder")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args(argv)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="tw-report-scale-")
    folder = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        spec = load_spec(folder, args.seeds)
        runs = len(DOMAINS) * len(LEVELS) * args.seeds
        what = (
            f"{runs} runs x {args.checkpoints} checkpoints x {len(TRAITS) * args.questions} questions x {args.samples} samples, "
            f"{len(JUDGES)} judges"
        )
        t = time.perf_counter()
        reused = _complete(folder / "study.sqlite")
        links = build_store(folder / "study.sqlite", spec, checkpoints=args.checkpoints, questions=args.questions, samples=args.samples)
        t_store = time.perf_counter() - t
        how = "reused (built by an earlier run; counted in" if reused else "built in"
        mb = (folder / "study.sqlite").stat().st_size / 1e6
        print(f"store: {links:,} score links ({what}) {how} {t_store:.1f} s{')' if reused else ''} -> {mb:.0f} MB")
        with Store(folder / "study.sqlite", readonly=True) as store:
            t = time.perf_counter()
            analysis = analyze(store, spec, SETTINGS)
            t_analyze = time.perf_counter() - t
            print(f"analyze: {t_analyze:.1f} s ({len(analysis.curves)} curves, {len(analysis.onsets)} onsets, {len(analysis.leads)} leads)")
            judges = {j.name: {"kind": j.kind, "weak": j.weak, "model": j.label()} for j in spec.judges}
            t = time.perf_counter()
            html = write_report(folder / "report", spec, analysis, store, judges=judges)
            t_render = time.perf_counter() - t
        size = html.stat().st_size / 1e6
        print(f"render: {t_render:.1f} s -> {html} ({size:.1f} MB)")
        if args.no_browser:
            print(f"report: {size:.1f} MB, usable not measured ({what})")
            return 0
        first, again, wall, errors = browser(html, folder / "chromium-profile")
        print(f"browser: first open usable at {first / 1000:.2f} s (wall {wall:.2f} s), reload {again / 1000:.2f} s")
        if errors:
            print(f"browser: {len(errors)} page error(s): {errors[:3]}")
        print(f"report: {size:.1f} MB, usable in {first / 1000:.2f} s ({what})")
        return 0 if not errors else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
