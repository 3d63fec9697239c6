"""Scores as rows (``ScoreRow``) and as columns (``ScoreColumns``), and how columns are built.

Why columns: at paper scale a study holds millions of scores. As ``ScoreRow`` objects they
cost ~230 bytes each (and rows read from SQLite hold a new ``str`` per text field per row);
as columns they cost 64 bytes each: one shared ``str`` per distinct text value (an 8-byte
reference per row), int64 step and sample, float64 score. The analysis works on the columns
with numpy. Why here, in the store: the store produces them (``Store.score_columns``) and the
analysis consumes them; the analysis imports the store, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One judged answer, joined for analysis."""

    run_id: str
    step: int
    suite: str
    question_id: str
    sample: int
    judge: str
    trait: str
    score: float | None


TEXT_FIELDS = ("run_id", "suite", "question_id", "judge", "trait")
INT_FIELDS = ("step", "sample")


@dataclass(frozen=True, eq=False)
class ScoreColumns:
    """Scores as columns: one equal-length 1-D numpy array per ``ScoreRow`` field.

    Text fields may be object arrays of ``str`` (shared strings cost 8 bytes a row) or numpy
    string arrays; ``step`` and ``sample`` integer arrays; ``score`` floats, NaN for no score.
    At millions of scores this is a small fraction of the memory of ``ScoreRow`` objects.
    """

    run_id: np.ndarray
    step: np.ndarray
    suite: np.ndarray
    question_id: np.ndarray
    sample: np.ndarray
    judge: np.ndarray
    trait: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        """Check shapes and dtypes once, so every consumer can rely on them."""
        n = len(self.score)
        for f in fields(self):
            col = getattr(self, f.name)
            if not isinstance(col, np.ndarray) or col.ndim != 1 or len(col) != n:
                raise ValueError(f"ScoreColumns.{f.name}: expected a 1-D numpy array of length {n}")
        for name in INT_FIELDS:
            if getattr(self, name).dtype.kind not in "iu":
                raise ValueError(f"ScoreColumns.{name}: expected integers, got {getattr(self, name).dtype}")
        if self.score.dtype.kind != "f":
            raise ValueError(f"ScoreColumns.score: expected floats, got {self.score.dtype}")

    def __len__(self) -> int:
        """The number of scores (rows)."""
        return len(self.score)

    def arrays(self) -> dict[str, np.ndarray]:
        """Field name -> column, in ``ScoreRow`` field order (to rebuild or transform columns)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def empty(cls) -> ScoreColumns:
        """No scores, with the usual dtypes (object text, int64, float64)."""
        return cls(**{name: np.zeros(0, dtype=_dtype(name)) for name in _FIELD_NAMES})

    @classmethod
    def from_rows(cls, rows: Iterable[ScoreRow]) -> ScoreColumns:
        """Columns of ``rows`` (None scores become NaN); for callers that hold rows already."""
        seq = rows if isinstance(rows, Sequence) else list(rows)
        n = len(seq)
        cols: dict[str, np.ndarray] = {}
        for name in _FIELD_NAMES:
            values = map(attrgetter(name), seq)
            if name == "score":
                cols[name] = np.fromiter(values, dtype=object, count=n).astype(float)
            else:
                cols[name] = np.fromiter(values, dtype=_dtype(name), count=n)
        return cls(**cols)

    @classmethod
    def concat(cls, parts: Sequence[ScoreColumns]) -> ScoreColumns:
        """The rows of ``parts``, one after another (copies; the parts are left as they are)."""
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in _FIELD_NAMES})

    @classmethod
    def concat_consuming(cls, parts: list[ScoreColumns]) -> ScoreColumns:
        """Like ``concat``, but empties ``parts`` and joins one field at a time, dropping each
        field's sources once its joined column is built.

        Why: appending the combined judge to millions of scores would otherwise hold the old
        columns and the joined copy at once (1.5x the joined size on top); this way the extra
        is one field's worth. The memory is only released if the caller keeps no other
        reference to the parts (``parts = [cols, extra]; del cols, extra``).
        """
        pending = [p.arrays() for p in parts]
        parts.clear()
        if not pending:
            return cls.empty()
        return cls(**{name: np.concatenate([d.pop(name) for d in pending]) for name in _FIELD_NAMES})

    def slice(self, start: int, stop: int) -> ScoreColumns:
        """Rows ``start:stop``, as views of these arrays (no copy)."""
        return ScoreColumns(**{name: col[start:stop] for name, col in self.arrays().items()})

    def select(self, mask: np.ndarray) -> ScoreColumns:
        """The rows where ``mask`` is True, in order. Why not plain ``col[mask]``: when the rows
        kept are all or one contiguous block (the store's scores before an appended combined
        judge), the result is ``self`` or views, not a copy of millions of rows."""
        keep = np.flatnonzero(mask)
        if keep.size == len(self):
            return self
        if keep.size == 0:
            return self.slice(0, 0)
        lo, hi = int(keep[0]), int(keep[-1]) + 1
        if hi - lo == keep.size:
            return self.slice(lo, hi)
        return ScoreColumns(**{name: col[keep] for name, col in self.arrays().items()})

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes of text field ``name``, numbered in the sorted order of its distinct
        values, and those values. Why: grouping and sorting by text with numpy needs integers;
        numbering in sorted order keeps "sorted by code" equal to "sorted by text"."""
        if name not in TEXT_FIELDS:
            raise ValueError(f"ScoreColumns.codes: {name!r} is not a text field")
        return text_codes(getattr(self, name))

    def mask(self, name: str, predicate: Callable[[str], bool]) -> np.ndarray:
        """Boolean mask of the rows whose text field ``name`` satisfies ``predicate``. Why:
        the predicate runs once per distinct value, not once per row."""
        codes, levels = self.codes(name)
        ok = np.fromiter((bool(predicate(v)) for v in levels), dtype=bool, count=len(levels))
        return ok[codes]

    def row(self, i: int) -> ScoreRow:
        """Row ``i`` as a ``ScoreRow`` (NaN score -> None)."""
        s = float(self.score[i])
        return ScoreRow(
            str(self.run_id[i]),
            int(self.step[i]),
            str(self.suite[i]),
            str(self.question_id[i]),
            int(self.sample[i]),
            str(self.judge[i]),
            str(self.trait[i]),
            None if np.isnan(s) else s,
        )

    def to_rows(self) -> list[ScoreRow]:
        """Every row as a ``ScoreRow`` (for small inputs and tests; defeats the point at scale)."""
        return [self.row(i) for i in range(len(self))]


_FIELD_NAMES = tuple(f.name for f in fields(ScoreRow))
assert _FIELD_NAMES == tuple(f.name for f in fields(ScoreColumns)), "ScoreColumns must mirror ScoreRow"
assert set(_FIELD_NAMES) == set(TEXT_FIELDS) | set(INT_FIELDS) | {"score"}


def _dtype(name: str) -> Any:
    """The dtype a field gets when this module builds its column."""
    return object if name in TEXT_FIELDS else np.int64 if name in INT_FIELDS else np.float64


def _code_dtype(n: int) -> type[np.signedinteger[Any]]:
    """int32 codes where they fit (half the memory of int64 at millions of rows)."""
    return np.int32 if n < 2**31 - 1 else np.int64


def text_codes(col: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes of a text column, numbered in the sorted order of its distinct values, and the
    values (as ``str``). Object arrays go through a dict (one hash per row, no Python sort of
    the rows); numpy string arrays through ``np.unique``."""
    if col.dtype.kind in "USa":
        levels, inverse = np.unique(col, return_inverse=True)
        return inverse.reshape(-1).astype(_code_dtype(levels.size)), [str(x) for x in levels]
    levels_ = sorted(set(col))
    index = {s: i for i, s in enumerate(levels_)}
    codes = np.fromiter(map(index.__getitem__, col), dtype=_code_dtype(len(levels_)), count=col.size)
    return codes, [str(x) for x in levels_]


class ScoreColumnsBuilder:
    """Builds ``ScoreColumns`` from batches of tuples (a cursor's ``fetchmany``), compactly.

    Why: reading millions of scores row by row into objects is what columns avoid. Each batch
    is written into the columns at once and its per-row Python objects are dropped: text
    values are interned per column with a dict, so equal strings are one shared ``str`` (the
    driver makes a new one per row); step and sample become int64; score float64, NaN for None.

    Why one growing array per field, not a list of chunks joined at the end: joining holds the
    chunks and the joined copy at once, and freed chunks stay resident in the C heap (measured:
    a read of 4 million scores peaked ~250 MB above its result). Arrays grow by a quarter at a
    time with ``ndarray.resize`` (``realloc``: a large array is remapped, not copied) and are cut
    to size at the end, so the peak is at most ~1.25x the result.
    """

    _GROWTH = 1.25
    _MIN_CAPACITY = 1 << 12

    def __init__(self, names: Sequence[str]) -> None:
        """``names``: the field each tuple position holds (e.g. a cursor's column names)."""
        missing = set(_FIELD_NAMES) - set(names)
        if missing:
            raise ValueError(f"ScoreColumnsBuilder: no column for {sorted(missing)}")
        self._position = {name: list(names).index(name) for name in _FIELD_NAMES}
        self._interned: dict[str, dict[Any, Any]] = {name: {} for name in TEXT_FIELDS}
        self._columns = {name: np.zeros(0, dtype=_dtype(name)) for name in _FIELD_NAMES}
        self._n = 0

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` more rows (growing every column by at least a quarter)."""
        need = self._n + extra
        capacity = len(self._columns["score"])
        if need <= capacity:
            return
        capacity = max(need, int(capacity * self._GROWTH), self._MIN_CAPACITY)
        for col in self._columns.values():
            col.resize(capacity, refcheck=False)  # owned, never viewed outside: safe in place

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        """Append the rows of ``batch`` (tuples in the ``names`` order)."""
        n = len(batch)
        if n == 0:
            return
        self._reserve(n)
        rows = slice(self._n, self._n + n)
        columns = list(zip(*batch, strict=True))
        for name, pos in self._position.items():
            values = columns[pos]
            if name in TEXT_FIELDS:
                seen = self._interned[name]
                self._columns[name][rows] = np.fromiter(map(seen.setdefault, values, values), dtype=object, count=n)
            else:
                self._columns[name][rows] = values  # ints; floats with None -> NaN
        self._n += n

    def build(self) -> ScoreColumns:
        """The columns of every row added so far (cut to size); the builder is left empty."""
        columns, self._columns = self._columns, {name: np.zeros(0, dtype=_dtype(name)) for name in _FIELD_NAMES}
        for col in columns.values():
            col.resize(self._n, refcheck=False)
        self._n = 0
        return ScoreColumns(**columns)
