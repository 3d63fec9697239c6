"""The study store: one SQLite file holding every result of a study, with provenance.

Why SQLite: one file to copy, atomic transactions (a crash leaves the last committed state),
WAL so a reader (a live monitor, the report) never blocks the writer, and SQL for the
joins the analysis needs. Each stage writes in small transactions so a ``kill -9`` loses at
most the batch in flight. Keys are content hashes (see ``_keys``): work is skipped exactly
when its inputs are unchanged.

Tables:
  runs         one row per (domain, level, seed) run, with the fingerprint of its settings
  checkpoints  one row per saved adapter (run, step), with train and held-out loss
  generations  one answer per (checkpoint, question, sample, generation settings)
  judgments    one score per (judge identity, trait, rubric/checker, question, answer, context)
  scores       links a generation to its judgment for (judge name, trait)
  alarms       onsets raised by the live monitor
  meta         study-level facts (schema version, spec, model description)

Rows are written and read by column name, never by position: every INSERT names its columns
and every read builds its dataclass from named columns. The column lists come from one place
per table (the row dataclass's fields plus the stored-only columns, see ``_Table``), so a
column added to the schema, or a dataclass field reordered, cannot silently shift values into
the wrong column.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from traitwatch.errors import StoreError

from ._columns import ScoreColumns, ScoreColumnsBuilder, ScoreRow

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    domain TEXT NOT NULL,
    level TEXT NOT NULL,
    seed INTEGER NOT NULL,
    model TEXT NOT NULL,
    dataset_sha TEXT NOT NULL,
    n_train INTEGER,
    n_heldout INTEGER,
    total_steps INTEGER,
    status TEXT NOT NULL DEFAULT 'planned',
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    adapter_sha TEXT NOT NULL,
    train_loss REAL,
    heldout_loss REAL,
    learning_rate REAL,
    tokens_seen INTEGER,
    elapsed_s REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS generations (
    gen_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    suite TEXT NOT NULL,
    question_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    finish TEXT NOT NULL,
    probes TEXT NOT NULL DEFAULT '{}',
    settings_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS gen_by_run ON generations(run_id, step, settings_hash);
CREATE TABLE IF NOT EXISTS judgments (
    judgment_key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    judge_identity TEXT NOT NULL,
    trait TEXT NOT NULL,
    scoring_hash TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    score REAL,
    reason TEXT,
    method TEXT NOT NULL,
    raw TEXT NOT NULL DEFAULT '{}',
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    gen_key TEXT NOT NULL,
    judge TEXT NOT NULL,
    trait TEXT NOT NULL,
    judgment_key TEXT NOT NULL,
    PRIMARY KEY (gen_key, judge, trait)
);
CREATE TABLE IF NOT EXISTS alarms (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    judge TEXT NOT NULL,
    trait TEXT NOT NULL,
    detector TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    acted_at REAL,
    PRIMARY KEY (run_id, judge, trait, detector)
);
"""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    run_id: str
    step: int
    path: str
    adapter_sha: str
    train_loss: float | None
    heldout_loss: float | None
    learning_rate: float | None
    tokens_seen: int | None
    elapsed_s: float | None


@dataclass(frozen=True, slots=True)
class GenerationRow:
    gen_key: str
    run_id: str
    step: int
    suite: str
    question_id: str
    sample: int
    question: str
    answer: str
    n_tokens: int
    finish: str
    probes: dict[str, float]
    settings_hash: str


@dataclass(frozen=True, slots=True)
class JudgmentRow:
    judgment_key: str
    judge: str
    judge_identity: str
    trait: str
    scoring_hash: str
    prompt_hash: str
    score: float | None
    reason: str | None
    method: str
    raw: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class CheckpointAnswers:
    """One checkpoint's answers (of one generation settings hash) with the judgments linked to them.

    ``generations`` are ordered by suite, question_id, sample; ``judgments`` maps a gen_key to
    its ``(judge, trait, judgment)`` links, ordered by judge and trait (an answer nobody judged
    yet has no entry). ``first_created`` / ``last_created``: when the first and the last of
    these answers were stored (Unix seconds).
    """

    run_id: str
    step: int
    generations: list[GenerationRow]
    judgments: dict[str, list[tuple[str, str, JudgmentRow]]]
    first_created: float
    last_created: float


_R = TypeVar("_R")


class _Table(Generic[_R]):
    """One table's columns, from one place: the row dataclass's fields plus stored-only columns.

    ``fields`` are the dataclass's fields in its order; ``extra`` are columns the store fills in
    itself (``created_at``), written after the fields. JSON columns are encoded and decoded by name.
    """

    def __init__(self, name: str, row_type: type[_R], *, extra: tuple[str, ...] = (), json_columns: tuple[str, ...] = ()) -> None:
        self.name = name
        self.row_type = row_type
        self.fields: tuple[str, ...] = tuple(f.name for f in fields(row_type))  # type: ignore[arg-type]
        self.extra = extra
        self.columns = self.fields + extra
        self.json_columns = frozenset(json_columns)
        assert self.json_columns <= set(self.fields), (name, json_columns)

    def insert_sql(self, conflict: str) -> str:
        """``INSERT OR <conflict> INTO table (col, ...) VALUES (?, ...)`` over ``columns``."""
        assert conflict in ("IGNORE", "REPLACE")
        return _insert_sql(f"INSERT OR {conflict}", self.name, self.columns)

    def select_sql(self) -> str:
        return f"SELECT {', '.join(self.fields)} FROM {self.name}"

    def values(self, row: _R, *extra: Any) -> tuple[Any, ...]:
        """The parameters for ``insert_sql``: the row's fields by name, then ``extra`` in ``self.extra`` order."""
        assert len(extra) == len(self.extra), (self.name, extra)
        js = self.json_columns
        return tuple(json.dumps(getattr(row, n)) if n in js else getattr(row, n) for n in self.fields) + extra

    def decode(self, r: sqlite3.Row) -> _R:
        """Build the row dataclass from a ``sqlite3.Row`` by column name."""
        js = self.json_columns
        return self.row_type(**{n: json.loads(r[n]) if n in js else r[n] for n in self.fields})


_CHECKPOINTS = _Table("checkpoints", CheckpointRow, extra=("created_at",))
_GENERATIONS = _Table("generations", GenerationRow, extra=("created_at",), json_columns=("probes",))
_JUDGMENTS = _Table("judgments", JudgmentRow, extra=("created_at",), json_columns=("raw",))

# Tables without a row dataclass: their column lists, in one place each.
_RUN_COLUMNS = (
    "run_id", "fingerprint", "domain", "level", "seed", "model", "dataset_sha",
    "n_train", "n_heldout", "total_steps", "status", "info",
)  # fmt: skip
_RUN_UPSERT_COLUMNS = tuple(c for c in _RUN_COLUMNS if c != "status")  # status is set by set_run_status
_RUN_UPDATE_ON_CONFLICT = ("n_train", "n_heldout", "total_steps", "info")
_LINK_COLUMNS = ("gen_key", "judge", "trait", "judgment_key")  # the order of add_judgments' link tuples
_ALARM_COLUMNS = ("run_id", "step", "judge", "trait", "detector", "message", "created_at", "info", "acted_at")

# Where each ScoreRow / answer_scores field comes from in the generations-scores-judgments(-runs) join.
_SCORE_SOURCES = {
    "run_id": "g.run_id",
    "domain": "r.domain",
    "level": "r.level",
    "seed": "r.seed",
    "step": "g.step",
    "suite": "g.suite",
    "question_id": "g.question_id",
    "sample": "g.sample",
    "judge": "s.judge",
    "trait": "s.trait",
    "score": "j.score",
    "answer": "g.answer",
}
_SCORE_FIELDS = tuple(f.name for f in fields(ScoreRow))
_ANSWER_SCORE_KEYS = (
    "run_id", "domain", "level", "seed", "step", "trait", "suite", "question_id", "sample", "judge", "score", "answer",
)  # fmt: skip


def _score_sql(names: Sequence[str], *, with_runs: bool) -> str:
    """The scores join, selecting ``names`` (each aliased to its own name) for one settings hash."""
    select = ", ".join(f"{_SCORE_SOURCES[n]} AS {n}" for n in names)
    runs = " LEFT JOIN runs r ON r.run_id=g.run_id" if with_runs else ""
    return (
        f"SELECT {select} FROM generations g JOIN scores s ON s.gen_key=g.gen_key"
        f" JOIN judgments j ON j.judgment_key=s.judgment_key{runs}"
        " WHERE g.settings_hash=? ORDER BY g.run_id, s.judge, s.trait, g.step, g.question_id, g.sample"
    )


# Built at import, so a ScoreRow field with no source above fails at once, not mid-study.
_SCORES_SQL = _score_sql(_SCORE_FIELDS, with_runs=False)
_ANSWER_SCORES_SQL = _score_sql(_ANSWER_SCORE_KEYS, with_runs=True)


def _insert_sql(verb: str, table: str, columns: Sequence[str]) -> str:
    """``<verb> INTO table (col, ...) VALUES (?, ...)``: always with an explicit column list."""
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class Store:
    """The study's SQLite store. Open with ``Store(path)``; close with ``close()`` or ``with``."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise StoreError("no study store here yet", where=str(self.path), fix="run the study first (traitwatch run)")
            uri = f"file:{self.path}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
            except (sqlite3.OperationalError, PermissionError, OSError) as exc:
                raise StoreError(
                    f"cannot open the study store: {exc}", where=str(self.path), fix="check the output folder is writable"
                ) from None
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self._add_missing_columns()
        self.conn.row_factory = sqlite3.Row
        version = self.get_meta("schema_version")
        if version is None and not readonly:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif version is not None and int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {version}, this traitwatch writes {SCHEMA_VERSION}",
                where=str(self.path),
                fix="use the traitwatch version that made it, or export and start a new study",
            )

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Commit on success, roll back on any error (including KeyboardInterrupt)."""
        try:
            yield self.conn
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def table_schema(self, table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(columns, primary-key columns) of ``table`` as this file records them.

        For code that treats every table alike (``traitwatch merge``): read from the file, not
        from this module, so a store made before a column was added says what it holds.
        """
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        info = self.conn.execute(f"PRAGMA table_info({table})").fetchall()
        if not info:
            raise StoreError(f"the store has no table '{table}'", where=str(self.path), fix="check the file is a traitwatch study store")
        key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
        return tuple(r[1] for r in info), key

    # -- runs and checkpoints ---------------------------------------------------------------
    def upsert_run(
        self,
        *,
        run_id: str,
        fingerprint: str,
        domain: str,
        level: str,
        seed: int,
        model: str,
        dataset_sha: str,
        n_train: int,
        n_heldout: int,
        total_steps: int,
        info: dict[str, Any],
    ) -> None:
        """Record a run; a run id already stored with another fingerprint is an error."""
        row = self.conn.execute("SELECT fingerprint FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is not None and row["fingerprint"] != fingerprint:
            raise StoreError(
                f"run '{run_id}' is stored with different settings (model, data, LoRA or training changed)",
                where=str(self.path),
                fix="use a new output_dir for the changed study, or delete the old one",
            )
        values = {
            "run_id": run_id,
            "fingerprint": fingerprint,
            "domain": domain,
            "level": level,
            "seed": seed,
            "model": model,
            "dataset_sha": dataset_sha,
            "n_train": n_train,
            "n_heldout": n_heldout,
            "total_steps": total_steps,
            "info": json.dumps(info),
        }
        update = ", ".join(f"{col}=excluded.{col}" for col in _RUN_UPDATE_ON_CONFLICT)
        with self.transaction() as c:
            c.execute(
                _insert_sql("INSERT", "runs", _RUN_UPSERT_COLUMNS) + f" ON CONFLICT(run_id) DO UPDATE SET {update}",
                tuple(values[col] for col in _RUN_UPSERT_COLUMNS),
            )

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=? WHERE run_id=?", (status, run_id))

    def runs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs ORDER BY domain, level, seed").fetchall()
        return [{col: json.loads(r[col]) if col == "info" else r[col] for col in _RUN_COLUMNS} for r in rows]

    def add_checkpoint(self, row: CheckpointRow) -> None:
        with self.transaction() as c:
            c.execute(_CHECKPOINTS.insert_sql("REPLACE"), _CHECKPOINTS.values(row, time.time()))

    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Forget a checkpoint (its folder was found damaged and will be redone)."""
        with self.transaction() as c:
            c.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, step))

    def checkpoints(self, run_id: str | None = None) -> list[CheckpointRow]:
        sql = _CHECKPOINTS.select_sql()
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        sql += " ORDER BY run_id, step"
        return [_CHECKPOINTS.decode(r) for r in self.conn.execute(sql, args).fetchall()]

    def checkpoint_exists(self, run_id: str, step: int) -> bool:
        """Whether a checkpoint is stored for (run, step)."""
        row = self.conn.execute("SELECT 1 FROM checkpoints WHERE run_id=? AND step=?", (run_id, step)).fetchone()
        return row is not None

    # -- generations ------------------------------------------------------------------------
    def existing(self, table: str, key_column: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already stored (chunked to stay under SQLite's limits)."""
        assert table in ("generations", "judgments") and key_column in ("gen_key", "judgment_key")
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found.update(
                r[key_column] for r in self.conn.execute(f"SELECT {key_column} FROM {table} WHERE {key_column} IN ({marks})", chunk)
            )
        return found

    def add_generations(self, rows: Iterable[GenerationRow]) -> int:
        now = time.time()
        with self.transaction() as c:
            cur = c.executemany(_GENERATIONS.insert_sql("IGNORE"), [_GENERATIONS.values(r, now) for r in rows])
            return cur.rowcount

    def generations(
        self, *, settings_hash: str | None = None, run_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[GenerationRow]:
        """Stored answers, filtered; ``keys`` reads just those rows (the live monitor's few
        probe answers, without scanning the run's whole history at every checkpoint)."""
        if keys is not None:
            rows: list[sqlite3.Row] = []
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                sql = _GENERATIONS.select_sql() + f" WHERE gen_key IN ({','.join('?' * len(chunk))})"
                rows += self.conn.execute(sql, chunk).fetchall()
            return [_GENERATIONS.decode(r) for r in rows]
        sql = _GENERATIONS.select_sql() + " WHERE 1=1"
        args: list[Any] = []
        if settings_hash is not None:
            sql += " AND settings_hash=?"
            args.append(settings_hash)
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        sql += " ORDER BY run_id, step, suite, question_id, sample"
        return [_GENERATIONS.decode(r) for r in self.conn.execute(sql, args)]

    def answer_checkpoints(self, *, settings_hash: str) -> list[tuple[str, int, int]]:
        """(run_id, step, number of answers) of every checkpoint with answers of these generation
        settings, in (run_id, step) order: what :meth:`checkpoint_answers` can read, and how much."""
        rows = self.conn.execute(
            "SELECT run_id, step, COUNT(*) AS n FROM generations WHERE settings_hash=? GROUP BY run_id, step ORDER BY run_id, step",
            (settings_hash,),
        )
        return [(r["run_id"], r["step"], r["n"]) for r in rows]

    def checkpoint_answers(self, run_id: str, step: int, *, settings_hash: str) -> CheckpointAnswers | None:
        """One checkpoint's answers of these generation settings with the judgments linked to
        them (None when it has none).

        Why one checkpoint at a time: an export of a paper-scale store (over a million answers,
        several judgments each) must not hold every row at once. A caller walks
        :meth:`answer_checkpoints` and reads each here (two indexed queries), holding one
        checkpoint's rows.
        """
        where = " WHERE g.run_id=? AND g.step=? AND g.settings_hash=?"
        args = (run_id, step, settings_hash)
        gen_sql = f"SELECT {', '.join(f'g.{c} AS {c}' for c in _GENERATIONS.columns)} FROM generations g{where}"
        rows = self.conn.execute(gen_sql + " ORDER BY g.suite, g.question_id, g.sample", args).fetchall()
        if not rows:
            return None
        link_sql = (
            "SELECT s.gen_key AS link_gen_key, s.judge AS link_judge, s.trait AS link_trait, "
            + ", ".join(f"j.{c} AS {c}" for c in _JUDGMENTS.fields)
            + f" FROM generations g JOIN scores s ON s.gen_key=g.gen_key JOIN judgments j ON j.judgment_key=s.judgment_key{where}"
            " ORDER BY s.gen_key, s.judge, s.trait"
        )
        judged: dict[str, list[tuple[str, str, JudgmentRow]]] = {}
        for r in self.conn.execute(link_sql, args):
            judged.setdefault(r["link_gen_key"], []).append((r["link_judge"], r["link_trait"], _JUDGMENTS.decode(r)))
        created = [float(r["created_at"]) for r in rows]
        return CheckpointAnswers(
            run_id=run_id,
            step=step,
            generations=[_GENERATIONS.decode(r) for r in rows],
            judgments=judged,
            first_created=min(created),
            last_created=max(created),
        )

    # -- judgments --------------------------------------------------------------------------
    def linked(self, judge: str) -> dict[tuple[str, str], str]:
        """(gen_key, trait) -> judgment_key already linked for ``judge``."""
        rows = self.conn.execute("SELECT gen_key, trait, judgment_key FROM scores WHERE judge=?", (judge,))
        return {(r["gen_key"], r["trait"]): r["judgment_key"] for r in rows}

    def add_judgments(self, judgments: Sequence[JudgmentRow], links: Sequence[tuple[str, str, str, str]]) -> None:
        """Store judgments and their (gen_key, judge, trait, judgment_key) links in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(_JUDGMENTS.insert_sql("IGNORE"), [_JUDGMENTS.values(j, now) for j in judgments])
            c.executemany(_insert_sql("INSERT OR REPLACE", "scores", _LINK_COLUMNS), links)

    def judgments(self, keys: Sequence[str] | None = None) -> list[JudgmentRow]:
        sql = _JUDGMENTS.select_sql()
        rows: list[sqlite3.Row] = []
        if keys is None:
            rows = self.conn.execute(sql).fetchall()
        else:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                rows += self.conn.execute(sql + f" WHERE judgment_key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return [_JUDGMENTS.decode(r) for r in rows]

    def copy_judgments(self, keys: Sequence[str], source: Store) -> set[str]:
        """Copy the judgments with these keys from ``source`` (a shared cache); returns the keys copied.

        The copies record no tokens and no cost: this study did not pay for them.
        """
        rows = source.judgments(keys)
        if rows:
            now = time.time()
            with self.transaction() as c:
                c.executemany(
                    _JUDGMENTS.insert_sql("IGNORE"),
                    [_JUDGMENTS.values(replace(j, input_tokens=0, output_tokens=0, cost_usd=0.0), now) for j in rows],
                )
        return {j.judgment_key for j in rows}

    def spend(self) -> dict[str, dict[str, float]]:
        """Tokens and cost per judge over the whole store."""
        rows = self.conn.execute(
            "SELECT judge, COUNT(*) AS judgments, SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,"
            " SUM(cost_usd) AS cost_usd FROM judgments GROUP BY judge"
        )
        return {
            r["judge"]: {
                "judgments": r["judgments"],
                "input_tokens": r["input_tokens"] or 0,
                "output_tokens": r["output_tokens"] or 0,
                "cost_usd": r["cost_usd"] or 0.0,
            }
            for r in rows
        }

    def score_coverage(self, *, settings_hash: str) -> list[dict[str, Any]]:
        """Per (run_id, step, judge), in that order: ``links``, the judge's score links of
        generations of these settings (one per answer and trait it judged), and ``unscored``,
        how many of them carry no score (the judgment's score is None). One aggregate query: a
        paper-scale store is counted without reading its rows (the report's judge coverage)."""
        rows = self.conn.execute(
            "SELECT g.run_id AS run_id, g.step AS step, s.judge AS judge, COUNT(*) AS links,"
            " SUM(CASE WHEN j.score IS NULL THEN 1 ELSE 0 END) AS unscored"
            " FROM generations g JOIN scores s ON s.gen_key=g.gen_key JOIN judgments j ON j.judgment_key=s.judgment_key"
            " WHERE g.settings_hash=? GROUP BY g.run_id, g.step, s.judge ORDER BY g.run_id, g.step, s.judge",
            (settings_hash,),
        )
        return [{k: r[k] for k in ("run_id", "step", "judge", "links", "unscored")} for r in rows]

    def scores(self, *, settings_hash: str) -> list[ScoreRow]:
        """Every current score: generations of these settings joined to their linked judgments."""
        names = _SCORE_FIELDS
        return [ScoreRow(**{n: r[n] for n in names}) for r in self.conn.execute(_SCORES_SQL, (settings_hash,))]

    def score_columns(self, *, settings_hash: str, batch_size: int = 1 << 16) -> ScoreColumns:
        """The rows of ``scores``, in the same order, as compact columns (see ``ScoreColumns``).

        Why: the analysis of a paper-scale study reads millions of scores; as ``ScoreRow``
        objects (plus a new ``str`` per text field per row from sqlite3) they alone exceed the
        memory budget. Here the cursor yields plain tuples in batches of ``batch_size``, and
        each batch is turned into numpy chunks at once (equal strings shared, None scores NaN),
        so only one batch of per-row objects exists at a time. Columns are found by name (the
        cursor's description), like every other read of this store.
        """
        cur = self.conn.cursor()
        cur.row_factory = None  # tuples, not sqlite3.Row: no per-row wrapper object
        try:
            cur.execute(_SCORES_SQL, (settings_hash,))
            builder = ScoreColumnsBuilder([d[0] for d in cur.description])
            while batch := cur.fetchmany(batch_size):
                builder.add(batch)
        finally:
            cur.close()
        return builder.build()

    def answer_scores(self, *, settings_hash: str) -> list[dict[str, Any]]:
        """Every current score with its run's design and the answer text, one dict per score link.

        The same rows, in the same order, as ``scores``: one per (generation, judge, trait) link
        for generations of these settings, ordered by run_id, judge, trait, step, question_id,
        sample. Keys: run_id, domain, level, seed, step, trait, suite, question_id, sample, judge,
        score, answer. ``domain``, ``level`` and ``seed`` are None for a generation whose run is
        not in ``runs`` (a store always records the run first).
        """
        names = _ANSWER_SCORE_KEYS
        return [{n: r[n] for n in names} for r in self.conn.execute(_ANSWER_SCORES_SQL, (settings_hash,))]

    # -- alarms -----------------------------------------------------------------------------
    def add_alarm(
        self, run_id: str, step: int, judge: str, trait: str, detector: str, message: str, info: dict[str, Any] | None = None
    ) -> bool:
        """Record an alarm; returns whether its actions are still to be taken: True when it is
        new, or was stored but never marked acted (:meth:`mark_alarm_acted`), False when this
        (run, judge, trait, detector) already fired and was acted on.

        Why two steps: a monitor killed between storing an alarm and acting on it would
        otherwise lose the alarm's file line, webhook post and stop; with the mark, a
        restarted monitor acts on it then (at least once, never silently dropped).
        ``info`` holds the alarm's details (onset step, last safe checkpoint, baseline, value).
        """
        values = {
            "run_id": run_id,
            "step": step,
            "judge": judge,
            "trait": trait,
            "detector": detector,
            "message": message,
            "created_at": time.time(),
            "info": json.dumps(info or {}),
            "acted_at": None,
        }
        with self.transaction() as c:
            c.execute(_insert_sql("INSERT OR IGNORE", "alarms", _ALARM_COLUMNS), tuple(values[col] for col in _ALARM_COLUMNS))
            row = c.execute(
                "SELECT acted_at FROM alarms WHERE run_id=? AND judge=? AND trait=? AND detector=?", (run_id, judge, trait, detector)
            ).fetchone()
            return row[0] is None

    def mark_alarm_acted(self, run_id: str, judge: str, trait: str, detector: str) -> None:
        """Record that an alarm's actions were taken (see :meth:`add_alarm`)."""
        with self.transaction() as c:
            c.execute(
                "UPDATE alarms SET acted_at=? WHERE run_id=? AND judge=? AND trait=? AND detector=?",
                (time.time(), run_id, judge, trait, detector),
            )

    def alarms(self) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_ALARM_COLUMNS)} FROM alarms ORDER BY created_at"
        return [{col: r[col] for col in _ALARM_COLUMNS} | {"info": json.loads(r["info"])} for r in self.conn.execute(sql)]

    def _add_missing_columns(self) -> None:
        """Columns added to the schema after a store was made (additive: old readers ignore them)."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(alarms)")}
        if "info" not in have:
            with self.transaction() as c:
                c.execute("ALTER TABLE alarms ADD COLUMN info TEXT NOT NULL DEFAULT '{}'")
        if "acted_at" not in have:  # alarms of older stores were acted on when they were stored
            with self.transaction() as c:
                c.execute("ALTER TABLE alarms ADD COLUMN acted_at REAL")
                c.execute("UPDATE alarms SET acted_at=created_at")

    # -- export -----------------------------------------------------------------------------
    def export(self, folder: str | Path, fmt: str = "csv") -> list[Path]:
        """Write every table to ``folder`` as CSV (or Parquet when pyarrow is installed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for table in ("runs", "checkpoints", "generations", "judgments", "scores", "alarms"):
            cur = self.conn.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            if fmt == "parquet":
                try:
                    import pyarrow as pa
                    import pyarrow.parquet as pq
                except ImportError:
                    raise StoreError(
                        "Parquet export needs pyarrow", where="export", fix="pip install 'traitwatch[parquet]' or use --format csv"
                    ) from None
                path = folder / f"{table}.parquet"
                pq.write_table(pa.table({c: [r[c] for r in rows] for c in cols}), path)
            else:
                path = folder / f"{table}.csv"
                with path.open("w", newline="", encoding="utf-8") as fh:
                    w = csv.writer(fh)
                    w.writerow(cols)
                    w.writerows(rows)
            out.append(path)
        return out
