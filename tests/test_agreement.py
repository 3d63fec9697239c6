"""Judge agreement: the O(n) Krippendorff's alpha and the numpy grouping against the O(n^2)
and dict-based definitions they replaced (copied here as references), and against the
``krippendorff`` package where it is installed (it is not a dependency)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import astuple
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from traitwatch.analysis._agreement import (
    ScoreColumns,
    combine_judges,
    disagreements,
    judge_agreement,
    krippendorff_alpha_interval,
    krippendorff_alpha_interval_array,
)
from traitwatch.store import ScoreRow

# -- references: the previous implementations, verbatim in substance --------------------------------


def reference_alpha(units: Iterable[Iterable[float | None]]) -> float | None:
    """The O(n^2) definition: mean squared difference over pairs within units vs over all pairs."""
    kept = [np.array([v for v in u if v is not None and np.isfinite(v)], dtype=float) for u in units]
    kept = [u for u in kept if u.size >= 2]
    if not kept:
        return None
    values = np.concatenate(kept)
    n = values.size
    d_o = 0.0
    for u in kept:
        diff = u[:, None] - u[None, :]
        d_o += (diff**2).sum() / (u.size - 1)
    d_o /= n
    diff_all = values[:, None] - values[None, :]
    d_e = (diff_all**2).sum() / (n * (n - 1))
    if d_e == 0:
        return None
    return float(1 - d_o / d_e)


def _reference_pairs(rows: Iterable[ScoreRow]):  # type: ignore[no-untyped-def]
    table: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.score is not None:
            table[r.trait][(r.run_id, r.step, r.suite, r.question_id, r.sample)][r.judge] = r.score
    for trait, items in sorted(table.items()):
        judges = sorted({j for v in items.values() for j in v})
        for a, b in combinations(judges, 2):
            yield trait, a, b, items


def reference_agreement(rows: list[ScoreRow]) -> list[tuple]:  # type: ignore[type-arg]
    out: list[tuple] = []  # type: ignore[type-arg]
    for trait, a, b, items in _reference_pairs(rows):
        pairs = np.array([(v[a], v[b]) for v in items.values() if a in v and b in v], dtype=float)
        if pairs.shape[0] < 2:
            out.append((trait, a, b, int(pairs.shape[0]), None, None, None, None))
            continue
        x, y = pairs[:, 0], pairs[:, 1]
        varied = np.std(x) > 0 and np.std(y) > 0
        sp = float(stats.spearmanr(x, y).statistic) if varied else None
        pe = float(stats.pearsonr(x, y).statistic) if varied else None
        out.append((trait, a, b, int(x.size), sp, pe, float(np.mean(np.abs(x - y))), reference_alpha(pairs.tolist())))
    return out


def reference_disagreements(rows: list[ScoreRow], k: int) -> list[tuple]:  # type: ignore[type-arg]
    out: list[tuple] = []  # type: ignore[type-arg]
    for trait, a, b, items in _reference_pairs(rows):
        both = [(abs(v[a] - v[b]), key, v[a], v[b]) for key, v in items.items() if a in v and b in v]
        both.sort(key=lambda x: (-x[0], x[1]))
        out.extend((trait, a, b, *key, sa, sb) for _, key, sa, sb in both[:k])
    return out


def reference_combine(rows: list[ScoreRow], judges: Iterable[str], mode: str) -> list[ScoreRow]:
    members = set(judges)
    items: dict = defaultdict(list)
    for r in rows:
        if r.judge in members and r.score is not None:
            items[(r.run_id, r.step, r.suite, r.question_id, r.sample, r.trait)].append(r.score)
    agg = np.mean if mode == "mean" else np.median
    return [
        ScoreRow(run, step, suite, q, sample, f"combined-{mode}", trait, float(agg(v)))
        for (run, step, suite, q, sample, trait), v in sorted(items.items())
        if len(v) >= 2
    ]


def same(a: float | None, b: float | None, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# -- random inputs ----------------------------------------------------------------------------------


def random_units(rng: np.random.Generator) -> list[list[float | None]]:
    """2-5 raters, some units short of two ratings, ties (small integers) or continuous values,
    missing as None or NaN (and now and then inf)."""
    raters = int(rng.integers(2, 6))
    integer = rng.random() < 0.5
    units: list[list[float | None]] = []
    for _ in range(int(rng.integers(1, 15))):
        row: list[float | None] = []
        for _ in range(raters):
            u = rng.random()
            if u < 0.15:
                row.append(None)
            elif u < 0.25:
                row.append(float("nan"))
            elif u < 0.27:
                row.append(float("inf"))
            else:
                row.append(float(rng.integers(0, 5)) if integer else float(rng.normal(50, 20)))
        units.append(row)
    return units


def as_array(units: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in u] for u in units], dtype=float)


def test_alpha_matches_quadratic_reference_on_random_inputs() -> None:
    rng = np.random.default_rng(20261122)
    defined = 0
    for _ in range(600):
        units = random_units(rng)
        ref = reference_alpha(units)
        assert same(krippendorff_alpha_interval(units), ref), units
        assert same(krippendorff_alpha_interval_array(as_array(units)), ref), units
        defined += ref is not None
    assert defined > 400, "most random cases have a defined alpha"


def test_alpha_ragged_units_and_large_offset() -> None:
    rng = np.random.default_rng(7)
    for _ in range(100):
        units = [[float(v) for v in rng.integers(0, 4, int(rng.integers(0, 6)))] for _ in range(int(rng.integers(1, 10)))]
        assert same(krippendorff_alpha_interval(units), reference_alpha(units))
    # a large common offset: the closed form uses deviations from means, so no cancellation
    base = rng.normal(0, 1, (50, 3))
    shifted = (base + 1e6).tolist()
    assert same(krippendorff_alpha_interval(shifted), reference_alpha(base.tolist()), tol=1e-6)


def test_alpha_matches_krippendorff_package() -> None:
    import krippendorff  # a dev dependency (make test installs it)

    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(200):
        units = random_units(rng)
        arr = as_array(units)
        arr[~np.isfinite(arr)] = np.nan
        ours = krippendorff_alpha_interval_array(arr)
        if ours is None:
            continue
        theirs = krippendorff.alpha(reliability_data=arr.T, level_of_measurement="interval")
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9), units
        checked += 1
    assert checked > 100


def test_alpha_undefined() -> None:
    assert krippendorff_alpha_interval([[3.0, 3.0], [3, 3, 3.0], [None, 3]]) is None, "no variation"
    assert krippendorff_alpha_interval([[0.1, 0.1, 0.1], [0.1, 0.1]]) is None, "no variation (mean not exact)"
    assert krippendorff_alpha_interval([[5], [None, 3], [1, float("nan")]]) is None, "no unit with two ratings"
    assert krippendorff_alpha_interval([]) is None
    assert krippendorff_alpha_interval([[None, None]]) is None
    assert krippendorff_alpha_interval_array(np.full((4, 2), 7.0)) is None
    assert krippendorff_alpha_interval_array(np.array([[1.0, np.nan], [np.nan, 2.0]])) is None
    assert krippendorff_alpha_interval_array(np.zeros((0, 2))) is None
    # single-rating units are dropped, not counted: same alpha with or without them
    core = [[1.0, 2.0], [4.0, 4.0], [0.0, 1.0]]
    assert krippendorff_alpha_interval(core + [[9.0], [None, -5.0]]) == pytest.approx(krippendorff_alpha_interval(core))
    with pytest.raises(ValueError):
        krippendorff_alpha_interval_array(np.zeros(3))


def test_alpha_perfect_agreement_is_one() -> None:
    assert krippendorff_alpha_interval([[1, 1], [2, 2], [5, 5, 5]]) == pytest.approx(1.0)


# -- judge agreement, disagreements, combined judge -------------------------------------------------


def test_judge_agreement_alpha_on_hand_built_rows() -> None:
    scores = [(0, 10), (50, 40), (100, 90), (20, 30), (60, None)]
    rows = []
    for i, (a, b) in enumerate(scores):
        rows.append(ScoreRow("r", i, "s", "q", 0, "A", "t", float(a)))
        rows.append(ScoreRow("r", i, "s", "q", 0, "B", "t", None if b is None else float(b)))
    (ag,) = judge_agreement(rows)
    paired = [(a, b) for a, b in scores if b is not None]
    assert (ag.trait, ag.judge_a, ag.judge_b, ag.n) == ("t", "A", "B", 4)
    assert ag.alpha == pytest.approx(reference_alpha(paired), abs=1e-12)
    assert ag.mae == pytest.approx(10.0) and ag.spearman == pytest.approx(1.0)
    # the same through the columnar input
    (agc,) = judge_agreement(ScoreColumns.from_rows(rows))
    assert agc == ag


def random_rows(rng: np.random.Generator, n: int, *, huge_keys: bool = False) -> list[ScoreRow]:
    """Few distinct keys, so judges overlap and repeat (a judge scoring an answer twice)."""
    rows = []
    for _ in range(n):
        step = int(rng.integers(0, 4)) * (10**17 if huge_keys else 10)
        sample = int(rng.integers(0, 2)) * (3 * 10**17 if huge_keys else 1)
        u = rng.random()
        score = None if u < 0.1 else float(rng.integers(0, 11)) if u < 0.6 else float(rng.random() * 100)
        rows.append(
            ScoreRow(
                str(rng.choice(["r1", "r2", "a"])),
                step,
                str(rng.choice(["s", "t"])),
                str(rng.choice(["q1", "q2", "q10"])),
                sample,
                str(rng.choice(["A", "B", "C", "check"])),
                str(rng.choice(["evil", "hallucination"])),
                score,
            )
        )
    return rows


def check_against_references(rows: list[ScoreRow], rng: np.random.Generator) -> None:
    ref = reference_agreement(rows)
    for got in (judge_agreement(rows), judge_agreement(ScoreColumns.from_rows(rows)), judge_agreement(iter(rows))):
        assert len(got) == len(ref)
        for g, r in zip(got, ref, strict=True):
            assert astuple(g)[:4] == r[:4]
            assert all(same(x, y) for x, y in zip(astuple(g)[4:], r[4:], strict=True)), (g, r)
    for k in (0, 1, 3, 5, 100, -1):
        want = reference_disagreements(rows, k)
        assert [astuple(d) for d in disagreements(rows, k)] == want
        assert [astuple(d) for d in disagreements(ScoreColumns.from_rows(rows), k)] == want
    for mode in ("mean", "median"):
        members = list(rng.choice(["A", "B", "C", "check"], size=int(rng.integers(0, 5)), replace=False))
        want_rows = reference_combine(rows, members, mode)
        assert combine_judges(rows, members, mode) == want_rows
        assert combine_judges(ScoreColumns.from_rows(rows), members, mode).to_rows() == want_rows


def test_agreement_disagreements_combined_match_dict_reference() -> None:
    rng = np.random.default_rng(3)
    for trial in range(60):
        check_against_references(random_rows(rng, int(rng.integers(0, 80)), huge_keys=trial % 3 == 0), rng)


def test_empty_and_single_judge() -> None:
    assert judge_agreement([]) == [] and disagreements([]) == [] and combine_judges([], ["A"], "mean") == []
    rows = [ScoreRow("r", 0, "s", "q", 0, "A", "t", 1.0), ScoreRow("r", 1, "s", "q", 0, "A", "t", 2.0)]
    assert judge_agreement(rows) == [] and disagreements(rows) == [] and combine_judges(rows, ["A"], "median") == []
    few = rows + [ScoreRow("r", 0, "s", "q", 0, "B", "t", 3.0)]
    (ag,) = judge_agreement(few)
    assert ag.n == 1 and ag.alpha is None and ag.mae is None


def test_score_columns_round_trip_and_validation() -> None:
    rows = random_rows(np.random.default_rng(5), 30)
    cols = ScoreColumns.from_rows(rows)
    assert len(cols) == 30 and cols.to_rows() == rows
    assert ScoreColumns.concat([cols.slice(0, 10), cols.slice(10, 30)]).to_rows() == rows
    with pytest.raises(ValueError):
        ScoreColumns(
            **{
                **{f: getattr(cols, f) for f in ("run_id", "step", "suite", "question_id", "sample", "judge", "trait")},
                "score": cols.score[:5],
            }
        )
