"""The study store: one SQLite file holding every result of a study, with provenance.

Why SQLite: one file to copy, atomic transactions (a crash leaves the last committed state),
WAL so a reader (``traitwatch watch``, the report) never blocks the writer, and SQL for the
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
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitwatch.errors import StoreError

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
    PRIMARY KEY (run_id, judge, trait, detector)
);
"""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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

    def __enter__(self) -> "Store":
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
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

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
        if row is not None and row[0] != fingerprint:
            raise StoreError(
                f"run '{run_id}' is stored with different settings (model, data, LoRA or training changed)",
                where=str(self.path),
                fix="use a new output_dir for the changed study, or delete the old one",
            )
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs(run_id, fingerprint, domain, level, seed, model, dataset_sha, n_train, n_heldout,"
                " total_steps, info) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET"
                " n_train=excluded.n_train, n_heldout=excluded.n_heldout, total_steps=excluded.total_steps,"
                " info=excluded.info",
                (run_id, fingerprint, domain, level, seed, model, dataset_sha, n_train, n_heldout, total_steps, json.dumps(info)),
            )

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status=? WHERE run_id=?", (status, run_id))

    def runs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM runs ORDER BY domain, level, seed").fetchall()
        return [dict(r) | {"info": json.loads(r["info"])} for r in rows]

    def add_checkpoint(self, row: CheckpointRow) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    row.run_id,
                    row.step,
                    row.path,
                    row.adapter_sha,
                    row.train_loss,
                    row.heldout_loss,
                    row.learning_rate,
                    row.tokens_seen,
                    row.elapsed_s,
                    time.time(),
                ),
            )

    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Forget a checkpoint (its folder was found damaged and will be redone)."""
        with self.transaction() as c:
            c.execute("DELETE FROM checkpoints WHERE run_id=? AND step=?", (run_id, step))

    def checkpoints(self, run_id: str | None = None) -> list[CheckpointRow]:
        sql = "SELECT run_id, step, path, adapter_sha, train_loss, heldout_loss, learning_rate, tokens_seen, elapsed_s FROM checkpoints"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        sql += " ORDER BY run_id, step"
        return [CheckpointRow(*r) for r in self.conn.execute(sql, args).fetchall()]

    # -- generations ------------------------------------------------------------------------
    def existing(self, table: str, key_column: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already stored (chunked to stay under SQLite's limits)."""
        assert table in ("generations", "judgments") and key_column in ("gen_key", "judgment_key")
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.conn.execute(f"SELECT {key_column} FROM {table} WHERE {key_column} IN ({marks})", chunk))
        return found

    def add_generations(self, rows: Iterable[GenerationRow]) -> int:
        now = time.time()
        with self.transaction() as c:
            cur = c.executemany(
                "INSERT OR IGNORE INTO generations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.gen_key,
                        r.run_id,
                        r.step,
                        r.suite,
                        r.question_id,
                        r.sample,
                        r.question,
                        r.answer,
                        r.n_tokens,
                        r.finish,
                        json.dumps(r.probes),
                        r.settings_hash,
                        now,
                    )
                    for r in rows
                ],
            )
            return cur.rowcount

    def generations(self, *, settings_hash: str | None = None, run_id: str | None = None) -> list[GenerationRow]:
        sql = (
            "SELECT gen_key, run_id, step, suite, question_id, sample, question, answer, n_tokens, finish, probes,"
            " settings_hash FROM generations WHERE 1=1"
        )
        args: list[Any] = []
        if settings_hash is not None:
            sql += " AND settings_hash=?"
            args.append(settings_hash)
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        sql += " ORDER BY run_id, step, suite, question_id, sample"
        out = []
        for r in self.conn.execute(sql, args):
            vals = list(r)
            vals[10] = json.loads(vals[10])
            out.append(GenerationRow(*vals))
        return out

    # -- judgments --------------------------------------------------------------------------
    def linked(self, judge: str) -> dict[tuple[str, str], str]:
        """(gen_key, trait) -> judgment_key already linked for ``judge``."""
        rows = self.conn.execute("SELECT gen_key, trait, judgment_key FROM scores WHERE judge=?", (judge,))
        return {(r[0], r[1]): r[2] for r in rows}

    def add_judgments(self, judgments: Sequence[JudgmentRow], links: Sequence[tuple[str, str, str, str]]) -> None:
        """Store judgments and their (gen_key, judge, trait, judgment_key) links in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO judgments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        j.judgment_key,
                        j.judge,
                        j.judge_identity,
                        j.trait,
                        j.scoring_hash,
                        j.prompt_hash,
                        j.score,
                        j.reason,
                        j.method,
                        json.dumps(j.raw),
                        j.input_tokens,
                        j.output_tokens,
                        j.cost_usd,
                        now,
                    )
                    for j in judgments
                ],
            )
            c.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?)", links)

    def judgments(self, keys: Sequence[str] | None = None) -> list[JudgmentRow]:
        sql = (
            "SELECT judgment_key, judge, judge_identity, trait, scoring_hash, prompt_hash, score, reason, method, raw,"
            " input_tokens, output_tokens, cost_usd FROM judgments"
        )
        rows: list[Any] = []
        if keys is None:
            rows = self.conn.execute(sql).fetchall()
        else:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                rows += self.conn.execute(sql + f" WHERE judgment_key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        out = []
        for r in rows:
            vals = list(r)
            vals[9] = json.loads(vals[9])
            out.append(JudgmentRow(*vals))
        return out

    def copy_judgments(self, keys: Sequence[str], source: "Store") -> set[str]:
        """Copy the judgments with these keys from ``source`` (a shared cache); returns the keys copied."""
        rows = source.judgments(keys)
        if rows:
            with self.transaction() as c:
                c.executemany(
                    "INSERT OR IGNORE INTO judgments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(j.judgment_key, j.judge, j.judge_identity, j.trait, j.scoring_hash, j.prompt_hash, j.score, j.reason,
                      j.method, json.dumps(j.raw), 0, 0, 0.0, time.time()) for j in rows],
                )
        return {j.judgment_key for j in rows}

    def spend(self) -> dict[str, dict[str, float]]:
        """Tokens and cost per judge over the whole store."""
        rows = self.conn.execute(
            "SELECT judge, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd) FROM judgments GROUP BY judge"
        )
        return {r[0]: {"judgments": r[1], "input_tokens": r[2] or 0, "output_tokens": r[3] or 0, "cost_usd": r[4] or 0.0} for r in rows}

    def scores(self, *, settings_hash: str) -> list[ScoreRow]:
        """Every current score: generations of these settings joined to their linked judgments."""
        sql = (
            "SELECT g.run_id, g.step, g.suite, g.question_id, g.sample, s.judge, s.trait, j.score"
            " FROM generations g JOIN scores s ON s.gen_key=g.gen_key JOIN judgments j ON j.judgment_key=s.judgment_key"
            " WHERE g.settings_hash=? ORDER BY g.run_id, s.judge, s.trait, g.step, g.question_id, g.sample"
        )
        return [ScoreRow(*r) for r in self.conn.execute(sql, (settings_hash,))]

    # -- alarms -----------------------------------------------------------------------------
    def add_alarm(self, run_id: str, step: int, judge: str, trait: str, detector: str, message: str) -> bool:
        """Record an alarm; returns False when this (run, judge, trait, detector) already fired."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO alarms VALUES (?,?,?,?,?,?,?)", (run_id, step, judge, trait, detector, message, time.time())
            )
            return cur.rowcount > 0

    def alarms(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM alarms ORDER BY created_at")]

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
                pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)}), path)
            else:
                path = folder / f"{table}.csv"
                with path.open("w", newline="", encoding="utf-8") as fh:
                    w = csv.writer(fh)
                    w.writerow(cols)
                    w.writerows(rows)
            out.append(path)
        return out
