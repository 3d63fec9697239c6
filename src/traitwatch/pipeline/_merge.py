"""Merge the output folders of one study run in parts (``traitwatch merge OUT_DIR STUDY_DIR...``).

Why: without Ray, a big study is split by hand: each job of a Slurm array (or each machine)
runs the same spec with ``--runs GLOB --output-dir DIR``. Every stored row is keyed by a hash
of its inputs (or by its run and step), so the jobs' stores are parts of one store and merging
is a union by primary key. Two rows under one key must then say the same; when they do not,
the parts are not of one study (another spec, a run trained twice, differently), and picking
one would make the merged study a lie: that is an error, and nothing is written.

Equal rows may differ in when they were written or how long it took, in where a checkpoint
lies (rewritten to OUT_DIR), and a judgment in its output: its key hashes every input of the
judge, so two jobs holding one key asked the same thing (one answer text, given by runs of
both), and an API judge or a GPU may answer twice differently, each as valid. The first
folder's is kept, as the judge stage and the judgment cache keep the first; the count is reported.

How: one transaction on OUT_DIR's store (each folder's rows whose key it holds are compared,
the others inserted; a conflict rolls all of it back, and a folder this merge created is
removed again), then the run folders are copied file by file through a temporary name,
skipping files already there: a rerun, or a rerun after a kill, adds nothing twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from traitwatch.errors import StoreError
from traitwatch.store import Store, StudyLock

from ._context import StudyPaths

#: The tables merged row by row, in an order that puts runs before what refers to them.
TABLES = ("runs", "checkpoints", "alarms", "generations", "judgments", "scores")
#: When a row was written, how long it took, where a checkpoint lies: equal rows may differ here.
VOLATILE = frozenset({"created_at", "acted_at", "elapsed_s", "path"})
#: What a judge said (and what it cost): one key may hold two valid answers (see above).
JUDGE_OUTPUT = frozenset({"score", "reason", "method", "raw", "input_tokens", "output_tokens", "cost_usd"})
#: Folders of a study folder copied file by file: the run folders, and the generated demo data.
COPIED = ("runs", "data")
#: Files of a study folder handled otherwise: the store (merged), the lock, the alarm file (joined).
HANDLED = frozenset({"study.sqlite", "study.sqlite-wal", "study.sqlite-shm", ".traitwatch.lock", "alarms.jsonl"})
_TMP = ".merge-tmp"
_BATCH = 2000


@dataclass
class MergeResult:
    """What a merge did: rows per table (new, already there), files copied, and notes."""

    out: Path
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    judgments_differing: int = 0
    paths_kept: int = 0
    files_copied: int = 0
    left_out: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, tuple[Any, ...], int, list[str]]] = field(default_factory=list)


def merge_studies(out: Path, folders: Sequence[Path]) -> MergeResult:
    """Merge the study folders ``folders`` into ``out`` (created, or continued when it exists)."""
    out = Path(out).expanduser().resolve()
    srcs = [Path(f).expanduser().resolve() for f in folders]
    for f in srcs:
        if f == out:
            raise StoreError("a folder to merge is the output folder", where=str(f), fix="merge into a new folder")
        if not StudyPaths(f).store.is_file():
            raise StoreError("no study store here (study.sqlite)", where=str(f), fix="give the output folders of the jobs")
    if len(set(srcs)) != len(srcs):
        raise StoreError("a folder is named twice", where=", ".join(map(str, srcs)), fix="name each folder once")
    created, committed = not out.exists(), False
    result = MergeResult(out)
    try:
        with ExitStack() as stack:
            stack.enter_context(StudyLock(out, what="the merged study"))
            for f in srcs:  # a job still running would be merged half done
                if os.access(f, os.W_OK):
                    stack.enter_context(StudyLock(f, what=f"the study in {f}"))
            sources = [stack.enter_context(Store(StudyPaths(f).store, readonly=True)) for f in srcs]
            with Store(StudyPaths(out).store) as store, store.transaction():
                _merge_meta(store, srcs, sources, out)
                for table in TABLES:
                    _merge_table(store, table, srcs, sources, result)
                if result.conflicts:
                    raise _conflict_error(store, srcs, sources, result)
            committed = True
            _copy_files(srcs, out, result)
    except BaseException:
        if created and not committed:
            _remove_created(out)
        raise
    return result


def _merge_meta(store: Store, srcs: list[Path], sources: list[Store], out: Path) -> None:
    """Study facts: the spec (paths moved to ``out``), the model, the generation settings hashes."""
    have = {r["key"]: r["value"] for r in store.conn.execute("SELECT key, value FROM meta")}
    origin = {k: f"{out} (merged before)" for k in have}
    for folder, src in zip(srcs, sources, strict=True):
        for r in src.conn.execute("SELECT key, value FROM meta ORDER BY key"):
            key, value = r["key"], r["value"]
            if key == "schema_version":  # equal: opening a store checks it
                continue
            if key == "spec":
                value = _moved_spec(value, folder, out)
            if key not in have:
                store.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                have[key], origin[key] = value, str(folder)
                continue
            diff = _meta_differences(key, have[key], value)
            if diff:
                raise StoreError(
                    f"meta '{key}' differs between {origin[key]} and {folder}: {'; '.join(diff[:6])}",
                    where=str(out),
                    fix="merge only folders of one study spec (the same file, split with --runs)",
                )


def _moved_spec(text: str, folder: Path, out: Path) -> str:
    """The stored spec of ``folder`` as the merged study's: its output folder is ``out``."""
    spec = yaml.safe_load(text)
    spec["output_dir"] = str(out)
    if spec.get("store"):  # the merged store is OUT_DIR's own
        spec["store"] = None
    monitor = spec.get("monitor") or {}
    if monitor.get("alarm_file") and Path(monitor["alarm_file"]).resolve() == folder / "alarms.jsonl":
        monitor["alarm_file"] = str(out / "alarms.jsonl")
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def _meta_differences(key: str, old: str, new: str) -> list[str]:
    """What differs between two values of meta ``key`` (empty: they agree)."""
    if key == "spec":  # where each job wrote may differ, nothing else
        a, b = (_placeless(yaml.safe_load(t)) for t in (old, new))
        return _differences(a, b, "")
    if key == "model":  # a description of the loaded model (its device may differ); the identity must not
        a, b = (yaml.safe_load(t).get("identity") for t in (old, new))
        return [] if a == b else [f"model identity {a} vs {b}"]
    if key.startswith("settings:"):
        return [] if old == new else [f"generation settings hash {old} vs {new} (model or generation settings)"]
    return [] if old == new else [f"{old[:60]!r} vs {new[:60]!r}"]


def _placeless(spec: dict[str, Any]) -> dict[str, Any]:
    """A parsed spec without what says where the study is written (each job its own folder)."""
    spec = {k: v for k, v in spec.items() if k not in ("output_dir", "store")}
    if isinstance(spec.get("monitor"), dict):
        spec["monitor"] = {k: v for k, v in spec["monitor"].items() if k != "alarm_file"}
    return spec


def _differences(a: Any, b: Any, where: str) -> list[str]:
    """The dotted keys where two parsed specs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys(), key=str) for d in _differences(a.get(k), b.get(k), f"{where}.{k}".lstrip("."))]
    return [] if a == b else [f"{where or 'spec'}: {a!r} vs {b!r}"]


def _merge_table(store: Store, table: str, srcs: list[Path], sources: list[Store], result: MergeResult) -> None:
    """Insert each folder's rows of ``table`` that ``store`` lacks; compare the ones it holds."""
    columns, key = store.table_schema(table)
    counts = result.tables.setdefault(table, {"new": 0, "same": 0})
    for i, (folder, src) in enumerate(zip(srcs, sources, strict=True)):
        names = [c for c in columns if c in src.table_schema(table)[0]]
        at = {c: j for j, c in enumerate(names)}
        output = {at[c] for c in names if table == "judgments" and c in JUDGE_OUTPUT}
        compared = [at[c] for c in names if c not in VOLATILE and at[c] not in output]
        insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        cur = src.conn.execute(f"SELECT {', '.join(names)} FROM {table}")
        while batch := cur.fetchmany(_BATCH):
            rows = [_moved_row(table, at, tuple(r), folder, result) for r in batch]
            have = _rows_by_key(store, table, names, key, [tuple(r[at[c]] for c in key) for r in rows])
            new = []
            for r in rows:
                old = have.get(tuple(r[at[c]] for c in key))
                if old is None:
                    new.append(r)
                elif differ := [names[j] for j in compared if old[j] != r[j]]:
                    result.conflicts.append((table, tuple(r[at[c]] for c in key), i, differ))
                else:
                    counts["same"] += 1
                    result.judgments_differing += any(old[j] != r[j] for j in output)
            store.conn.executemany(insert, new)
            counts["new"] += len(new)


def _rows_by_key(store: Store, table: str, names: list[str], key: tuple[str, ...], keys: list[tuple[Any, ...]]) -> dict[Any, Any]:
    """The rows of ``table`` (columns ``names``) under these primary keys, by key."""
    if not keys:
        return {}
    marks = ", ".join(["(" + ", ".join("?" * len(key)) + ")"] * len(keys))
    sql = f"SELECT {', '.join(names)} FROM {table} WHERE ({', '.join(key)}) IN (VALUES {marks})"
    at = {c: j for j, c in enumerate(names)}
    return {tuple(r[at[c]] for c in key): r for r in store.conn.execute(sql, [v for k in keys for v in k])}


def _moved_row(table: str, at: dict[str, int], row: tuple[Any, ...], folder: Path, result: MergeResult) -> tuple[Any, ...]:
    """A checkpoint row with its folder where the merge puts it (other rows as they are)."""
    if table != "checkpoints":
        return row
    path = Path(row[at["path"]])
    rel = _under(path, folder / "runs")
    if rel is None and len(path.parts) >= 4 and path.parts[-4] == "runs" and path.parts[-2] == "checkpoints":
        rel = Path(*path.parts[-3:])  # the folder was moved since it trained: found by its layout
    if rel is None or not (folder / "runs" / rel).is_dir():
        result.paths_kept += 1  # a run trained elsewhere (imported): its adapters stay where they are
        return row
    moved = list(row)
    moved[at["path"]] = str(result.out / "runs" / rel)
    return tuple(moved)


def _under(path: Path, base: Path) -> Path | None:
    """``path`` relative to ``base`` (as written or with links resolved), or None."""
    for p in (path, path.resolve()):
        if p.is_relative_to(base):
            return p.relative_to(base)
    return None


def _conflict_error(store: Store, srcs: list[Path], sources: list[Store], result: MergeResult) -> StoreError:
    """The first conflict, naming its table, key, columns and the two folders."""
    table, key, i, columns = result.conflicts[0]
    names = list(store.table_schema(table)[1])
    first = next((str(srcs[j]) for j in range(i) if _rows_by_key(sources[j], table, names, tuple(names), [key])), None)
    more = f" (and {len(result.conflicts) - 1} more conflicting rows)" if len(result.conflicts) > 1 else ""
    shown = ", ".join(f"{c}={v!r}" for c, v in zip(names, key, strict=True))
    return StoreError(
        f"table {table}: the row {shown} differs between {first or f'{result.out} (merged before)'} and {srcs[i]}"
        f" in {', '.join(columns)}{more}; nothing was written",
        where=str(result.out),
        fix="merge only folders of one study spec, each run trained by one job (--runs globs that do not overlap)",
    )


def _copy_files(srcs: list[Path], out: Path, result: MergeResult) -> None:
    """Copy the run folders and demo data (first folder wins a path), and join the alarm files."""
    left_out: set[str] = set()
    for folder in srcs:
        for name in COPIED:
            result.files_copied += _copy_tree(folder / name, out / name)
        left_out |= {p.name for p in folder.iterdir() if p.name not in HANDLED and p.name not in COPIED}
    _join_lines([f / "alarms.jsonl" for f in srcs], out / "alarms.jsonl")
    result.left_out = sorted(left_out)


def _copy_tree(src: Path, dst: Path) -> int:
    """Copy the files under ``src`` missing under ``dst``, each through a temporary name."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.endswith(".tmp"))  # checkpoints being written
        for name in sorted(filenames):
            if name.startswith(".traitwatch") or name.endswith(_TMP):
                continue
            target = dst / Path(dirpath).relative_to(src) / name
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + _TMP)
            shutil.copy2(Path(dirpath) / name, tmp)
            os.replace(tmp, target)
            n += 1
    return n


def _join_lines(files: list[Path], dst: Path) -> None:
    """Add to ``dst`` the lines of ``files`` it lacks (the alarm files: one JSON alarm a line)."""
    lines = dst.read_text(encoding="utf-8").splitlines() if dst.exists() else []
    theirs = [x for f in files if f.exists() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    have = set(lines)
    added = [x for x in dict.fromkeys(theirs) if x not in have]
    if added:
        tmp = dst.with_name(dst.name + _TMP)
        tmp.write_text("".join(f"{line}\n" for line in lines + added), encoding="utf-8")
        os.replace(tmp, dst)


def _remove_created(out: Path) -> None:
    """Undo a failed first merge into ``out``: remove its store and lock, and the folder if empty."""
    for name in ("study.sqlite", "study.sqlite-wal", "study.sqlite-shm", "study.sqlite-journal", ".traitwatch.lock"):
        (out / name).unlink(missing_ok=True)
    with suppress(OSError):  # not empty: not all of it was this merge's
        out.rmdir()
