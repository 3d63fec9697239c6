"""Columnar scores: ``arrange`` on ScoreColumns against the dict-based definition it replaced
(copied here as the reference), and the ScoreColumns helpers the analysis relies on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pytest

from traitwatch.analysis._samples import TraitSamples, arrange
from traitwatch.store import ScoreColumns, ScoreRow
from traitwatch.store._columns import ScoreColumnsBuilder


def reference_arrange(rows: Iterable[ScoreRow]) -> dict[tuple[str, str, str], TraitSamples]:
    """The previous arrange, verbatim in substance: a dict of rows per group, filled in row order."""
    groups: dict[tuple[str, str, str], list[ScoreRow]] = defaultdict(list)
    for r in rows:
        groups[(r.run_id, r.judge, r.trait)].append(r)
    out = {}
    for key, rs in groups.items():
        steps = np.array(sorted({r.step for r in rs}), dtype=int)
        units = tuple(sorted({(r.suite, r.question_id) for r in rs}))
        n_samples = max(r.sample for r in rs) + 1
        X = np.full((steps.size, len(units), n_samples), np.nan)
        si = {s: i for i, s in enumerate(steps)}
        ui = {u: i for i, u in enumerate(units)}
        for r in rs:
            if r.score is not None:
                X[si[r.step], ui[(r.suite, r.question_id)], r.sample] = r.score
        out[key] = TraitSamples(key[0], key[1], key[2], steps, units, X)
    return out


def random_rows(rng: np.random.Generator, n: int) -> list[ScoreRow]:
    """Rows with None scores, several runs/judges/traits, gaps in steps, repeated keys (so
    "last wins" matters), unsorted order, and values whose text order differs from numeric."""
    rows = []
    for _ in range(n):
        score = None if rng.random() < 0.2 else float(rng.integers(0, 101))
        rows.append(
            ScoreRow(
                str(rng.choice(["run-b", "run-a", "run-10"])),
                int(rng.choice([0, 5, 40, 15, 1000])),
                str(rng.choice(["s", "math", "t"])),
                str(rng.choice(["q1", "q2", "q10", "Q3"])),
                int(rng.integers(0, 4)),
                str(rng.choice(["A", "B", "combined-mean"])),
                str(rng.choice(["evil", "hallucination"])),
                score,
            )
        )
    return rows


def same_samples(got: dict[tuple[str, str, str], TraitSamples], want: dict[tuple[str, str, str], TraitSamples]) -> None:
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert (g.run_id, g.judge, g.trait) == (w.run_id, w.judge, w.trait) == key
        assert g.units == w.units and all(type(s) is str and type(q) is str for s, q in g.units)
        assert g.steps.dtype == w.steps.dtype and np.array_equal(g.steps, w.steps)
        assert g.X.shape == w.X.shape and np.array_equal(g.X, w.X, equal_nan=True), key


def test_arrange_columns_matches_the_dict_reference() -> None:
    rng = np.random.default_rng(11)
    for _ in range(80):
        rows = random_rows(rng, int(rng.integers(1, 300)))
        want = reference_arrange(rows)
        cols = ScoreColumns.from_rows(rows)
        same_samples(arrange(cols), want)
        same_samples(arrange(rows), want)
        same_samples(arrange(iter(rows)), want)
        # numpy string columns (not object arrays) group the same way
        text = {f: np.array(getattr(cols, f).tolist(), dtype=str) for f in ("run_id", "suite", "question_id", "judge", "trait")}
        same_samples(arrange(ScoreColumns(**{**cols.arrays(), **text})), want)
    assert arrange([]) == {} and arrange(ScoreColumns.empty()) == {}


def test_arrange_last_score_wins_and_none_does_not_erase() -> None:
    rows = [
        ScoreRow("r", 10, "s", "q", 1, "j", "t", 1.0),
        ScoreRow("r", 10, "s", "q", 1, "j", "t", 2.0),  # same cell: the last score wins
        ScoreRow("r", 10, "s", "q", 1, "j", "t", None),  # a None after it does not erase it
        ScoreRow("r", 0, "s", "q", 0, "j", "t", None),  # a step with no score is still a step
    ]
    ts = arrange(ScoreColumns.from_rows(rows))[("r", "j", "t")]
    assert ts.steps.tolist() == [0, 10] and ts.units == (("s", "q"),) and ts.X.shape == (2, 1, 2)
    assert ts.X[1, 0, 1] == 2.0 and np.isnan(ts.X[0]).all() and np.isnan(ts.X[1, 0, 0])


def test_select_mask_and_consuming_concat() -> None:
    rows = random_rows(np.random.default_rng(2), 50)
    cols = ScoreColumns.from_rows(rows)
    combined = cols.mask("judge", lambda j: j.startswith("combined-"))
    assert combined.tolist() == [r.judge.startswith("combined-") for r in rows]
    assert cols.select(~combined).to_rows() == [r for r in rows if not r.judge.startswith("combined-")]
    assert cols.select(np.ones(len(cols), dtype=bool)) is cols
    block = cols.select(np.arange(len(cols)) < 20)  # a leading block: views, no copy
    assert block.to_rows() == rows[:20] and np.shares_memory(block.score, cols.score)
    parts = [cols.slice(0, 20), cols.slice(20, 50)]
    joined = ScoreColumns.concat_consuming(parts)
    assert parts == [] and joined.to_rows() == rows
    assert len(ScoreColumns.concat_consuming([])) == 0 and len(ScoreColumns.concat([])) == 0
    with pytest.raises(ValueError):
        cols.codes("step")


def test_builder_interns_text_and_maps_none_to_nan() -> None:
    names = ["score", "trait", "judge", "sample", "question_id", "suite", "step", "run_id"]  # any order, by name
    b = ScoreColumnsBuilder(names)
    data = [(None, "t", "j", 0, "".join(["q", "1"]), "s", 3, "r"), (2.5, "t", "j", 1, "q1", "s", 4, "r")]
    b.add(data[:1])
    b.add([])
    b.add(data[1:])
    cols = b.build()
    assert cols.to_rows() == [ScoreRow("r", 3, "s", "q1", 0, "j", "t", None), ScoreRow("r", 4, "s", "q1", 1, "j", "t", 2.5)]
    assert cols.question_id[0] is cols.question_id[1]
    with pytest.raises(ValueError, match="no column"):
        ScoreColumnsBuilder(names[1:])
