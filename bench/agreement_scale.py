"""Judge agreement at paper scale: wall time and peak memory of the analysis-time agreement path.

What it runs: exactly what ``traitwatch.analysis.analyze`` does for judge agreement, on
synthetic scores for 2 judges x ``--answers`` answers (default 2,000,000, one trait):

0. (``--store`` only) ``Store.score_columns`` reads the scores from a real study store;
1. ``combine_judges(cols, judges, "mean")``, appended with ``ScoreColumns.concat_consuming``
   (the store's columns are released field by field as the joined ones are built);
2. ``judge_agreement(cols)`` over every score, the combined judge included (3 judge pairs:
   Spearman, Pearson, MAE and Krippendorff's alpha on ~2 million paired answers each);
3. ``disagreements`` over the scores whose judge is not a ``combined-`` one (a numpy mask;
   the judges' own scores are a leading block, so they are selected as views, not copied).

Why: the first implementation of alpha built an n x n difference matrix (terabytes at this
n) and grouped answers in dicts of ScoreRow objects; this checks that the whole step stays
within 60 s and 1 GB on a small machine. There is no ScoreRow-input mode any more: analyze
never builds ScoreRow objects (callers passing ``rows=`` are converted to columns first).

Counted: the wall time of steps (0-)3 only (building the synthetic input, or the store, is
not timed) and the process's peak resident memory (VmHWM) while they run. That peak
includes the input columns, resident for the whole analysis (without ``--store`` they are
built before the clock starts; with it, their reading is counted too). The high-water mark is
reset just before step 0/1 (``/proc/self/clear_refs``), so the input build's own transient
peak is not counted; it is reset again at the start of each step, to report each step's peak
(the overall peak is the largest). Where the reset is not allowed, ``ru_maxrss`` over the
whole run is reported.

Input: ``ScoreColumns`` as ``Store.score_columns`` returns them: rows in ``Store.scores``
order (run, judge, trait, step, question, sample), text fields as object arrays with one
shared ``str`` per distinct value, int64 step and sample, float64 scores. Judges score 0-100
integers: a latent per-answer score plus independent noise per judge; 2% of scores are
missing (NaN: unparseable judgments). ``--store PATH`` writes those scores into a study store
at PATH (once; reused when it already holds them) and reads them back with
``Store.score_columns`` inside the timed region.

Run:  python bench/agreement_scale.py [--answers N] [--store PATH]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from traitwatch.analysis import combine_judges, disagreements, judge_agreement
from traitwatch.store import GenerationRow, JudgmentRow, ScoreColumns, Store

SEED = 20261122
JUDGES = ("judge-a", "judge-b")
TRAIT = "evil"
QUESTIONS, STEPS, SAMPLES = 1000, 50, 5  # runs = answers / (QUESTIONS * STEPS * SAMPLES), rounded up
SETTINGS = "bench-settings"


def mib(kb: int) -> float:
    """kB (as /proc and ru_maxrss report on Linux) to MiB."""
    return kb / 1024


def _status_kb(field: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM), None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def peak_kb(reset_ok: bool) -> int:
    """Peak RSS since the reset (VmHWM), or over the whole run where the reset failed."""
    hwm = _status_kb("VmHWM") if reset_ok else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Phases:
    """Wall time, and peak RSS where the reset works, of each named phase (``with phases(name):``).
    The peak is reset at the start of each phase, so the overall peak is the largest of them."""

    def __init__(self, reset_ok: bool) -> None:
        self.reset_ok = reset_ok
        self.times: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.reset_ok:
            reset_peak()
        t = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t
        if self.reset_ok:
            self.peaks[name] = peak_kb(True)


def synthetic(n: int, seed: int) -> dict[str, np.ndarray]:
    """Per answer: run, step, question, sample indices and each judge's score (NaN = missing).
    Answers come in (run, step, question, sample) order."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    sample = i % SAMPLES
    question = (i // SAMPLES) % QUESTIONS
    step = (i // (SAMPLES * QUESTIONS)) % STEPS * 10
    run = i // (SAMPLES * QUESTIONS * STEPS)
    latent = np.clip(rng.normal(30, 25, n), 0, 100)
    out = {"run": run, "step": step, "question": question, "sample": sample}
    for j in JUDGES:
        s = np.clip(np.rint(latent + rng.normal(0, 10, n)), 0, 100)
        s[rng.random(n) < 0.02] = np.nan
        out[j] = s
    return out


def names(data: dict[str, np.ndarray]) -> tuple[list[str], list[str], list[str]]:
    """Run ids, question ids and each question's suite (ids sort like their indices)."""
    runs = [f"run-{r:03d}" for r in range(int(data["run"].max()) + 1)]
    questions = [f"q{q:05d}" for q in range(QUESTIONS)]
    suites = ["general" if q < QUESTIONS // 2 else "math" for q in range(QUESTIONS)]
    return runs, questions, suites


def _run_bounds(data: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """[lo, hi) of each run's answers."""
    run_of = data["run"]
    bounds = np.flatnonzero(np.r_[True, run_of[1:] != run_of[:-1], True])
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def shared(n: int, text: str) -> np.ndarray:
    """n references to one str (np.full(n, text, dtype=object) would copy the str n times)."""
    out = np.empty(n, dtype=object)
    out.fill(text)
    return out


def build_columns(data: dict[str, np.ndarray]) -> ScoreColumns:
    """The scores as Store.score_columns returns them: Store.scores order (run, judge, trait,
    then step, question, sample), object arrays of shared strings, int64, float64."""
    runs, questions, suites = names(data)
    run_s, q_s, suite_s = np.array(runs, dtype=object), np.array(questions, dtype=object), np.array(suites, dtype=object)
    parts = []
    for lo, hi in _run_bounds(data):
        sl = slice(lo, hi)
        for j in JUDGES:
            parts.append(
                ScoreColumns(
                    run_id=run_s[data["run"][sl]],
                    step=data["step"][sl].astype(np.int64),
                    suite=suite_s[data["question"][sl]],
                    question_id=q_s[data["question"][sl]],
                    sample=data["sample"][sl].astype(np.int64),
                    judge=shared(hi - lo, j),
                    trait=shared(hi - lo, TRAIT),
                    score=data[j][sl].astype(float),
                )
            )
    return ScoreColumns.concat_consuming(parts)


def build_store(path: Path, data: dict[str, np.ndarray]) -> int:
    """Write the scores into a study store at ``path`` (generations, judgments, score links)
    unless it already holds them; returns the number of scores it holds."""
    n = data["run"].size
    with Store(path) as st:
        if st.get_meta("bench_answers") == str(n):
            return int(st.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])
        runs, questions, suites = names(data)
        chunk = 50_000
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            gens, judgments, links = [], [], []
            for i in range(lo, hi):
                q = int(data["question"][i])
                key = f"g{i:09d}"
                gens.append(
                    GenerationRow(key, runs[int(data["run"][i])], int(data["step"][i]), suites[q], questions[q],
                                  int(data["sample"][i]), "Q?", "A.", 1, "stop", {}, SETTINGS)
                )  # fmt: skip
                for j in JUDGES:
                    v = float(data[j][i])
                    jk = f"{key}/{j}"
                    judgments.append(JudgmentRow(jk, j, j, TRAIT, "sh", "ph", None if v != v else v, None, "bench", {}))
                    links.append((key, j, TRAIT, jk))
            st.add_generations(gens)
            st.add_judgments(judgments, links)
        st.set_meta("bench_answers", str(n))
        return int(st.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    """Build the input, run the agreement path as analyze does, print times and peak RSS."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=int, default=2_000_000, help="answers per judge")
    ap.add_argument("--store", type=Path, help="write the scores to a study store here (once) and read them in the timed part")
    ap.add_argument("--k", type=int, default=5, help="disagreements kept per judge pair")
    args = ap.parse_args(argv)
    n = args.answers
    t = time.perf_counter()
    data = synthetic(n, SEED)
    cols: ScoreColumns | None = None
    if args.store is None:
        cols = build_columns(data)
        n_rows, kind = len(cols), "ScoreColumns"
    else:
        n_rows, kind = build_store(args.store, data), f"a study store ({args.store})"
    del data
    gc.collect()
    base_kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"input: {n_rows:,} scores as {kind} ({len(JUDGES)} judges x {n:,} answers, 1 trait), "
        f"built in {time.perf_counter() - t:.1f} s (not timed); RSS {mib(base_kb):.0f} MB"
    )
    reset_ok = reset_peak()
    phases = Phases(reset_ok)
    t0 = time.perf_counter()
    if cols is None:
        with phases("score_columns"), Store(args.store, readonly=True) as st:
            cols = st.score_columns(settings_hash=SETTINGS)
    # as analysis._study.analyze does: append the combined judge, releasing the old columns
    with phases("combine_judges"):
        parts = [cols, combine_judges(cols, JUDGES, "mean")]
        del cols
        cols = ScoreColumns.concat_consuming(parts)
    with phases("judge_agreement"):
        agreement = judge_agreement(cols)
    with phases("disagreements"):
        top = disagreements(cols.select(~cols.mask("judge", lambda j: j.startswith("combined-"))), k=args.k)
    total = time.perf_counter() - t0
    peak = max(phases.peaks.values()) if reset_ok else peak_kb(reset_ok)
    for a in agreement:
        print(
            f"  {a.trait} {a.judge_a} / {a.judge_b}: n={a.n:,} spearman={a.spearman:.4f} pearson={a.pearson:.4f} "
            f"mae={a.mae:.3f} alpha={a.alpha:.4f}"
        )
    print(f"  {len(top)} disagreements; largest |a - b| = {max(abs(d.score_a - d.score_b) for d in top):.0f}")
    peaks = {k: f" (peak {mib(v):.0f} MB)" for k, v in phases.peaks.items()}
    print("  " + ", ".join(f"{k} {v:.1f} s{peaks.get(k, '')}" for k, v in phases.times.items()))
    how = "VmHWM since the reset" if reset_ok else "ru_maxrss over the whole run (peak reset not allowed)"
    print(f"  peak RSS {mib(peak):.0f} MB ({how}), {mib(peak - base_kb):.0f} MB above the RSS before the timed part")
    print(f"agreement on {n} answers: {total:.1f} s, peak {mib(peak):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
