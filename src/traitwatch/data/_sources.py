"""One condition's data from wherever researchers keep it: JSONL, parquet, a dataset folder, the hub.

Why: training data for emergent-misalignment studies is published as chat JSONL, as
prompt/completion pairs, as parquet files and as Hugging Face datasets. Each source is read
into the same checked conversations (``ChatDataset``): the same rows give the same examples
and the same dataset sha, whatever the format, so a study's run fingerprints do not depend
on how its data was stored. ``datasets`` and ``pyarrow`` are imported only when a source needs
them (the ``datasets`` and ``parquet`` extras).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from traitwatch.config import DataSourceSpec
from traitwatch.errors import DataError

from ._chat import ChatDataset, ChatExample, detect_columns, finish, load_chat_jsonl, to_messages

#: Rows read from a table at a time.
BATCH = 1024
_DOCS = "docs/data.md"


def load_source(src: DataSourceSpec, *, limit: int | None = None) -> ChatDataset:
    """Read and check one source: a JSONL file, a parquet file, a dataset folder or a hub id.

    Raises:
        DataError: the data is missing, unreadable, lacks the mapped columns, names an unknown
            split, or has bad rows (all of them listed, the first with its line or row).
    """
    if src.hub is not None:
        return _from_dataset(_load_hub(src), src, src.label() + f"[{src.split}]", limit)
    assert src.path is not None
    path = src.path
    if not path.exists():
        raise DataError("dataset file not found", where=str(path), fix="check the path in the study's datasets")
    if path.is_dir():
        data, label = _load_folder(src, path)
        return _from_dataset(data, src, label, limit)
    _one_split(src, str(path), ["train"], "a single file")
    if path.suffix.lower() == ".parquet":
        return _from_parquet(path, src, limit)
    return load_chat_jsonl(path, limit=limit, columns=_columns(src))


def _columns(src: DataSourceSpec) -> dict[str, str] | None:
    return {str(k): v for k, v in src.columns.items()} or None


def _one_split(src: DataSourceSpec, where: str, splits: list[str], what: str) -> None:
    if src.split not in splits:
        raise DataError(
            f"unknown split '{src.split}'; {what} has: {', '.join(splits)}",
            where=where,
            fix=f"use split: {' or '.join(splits)}" + (" (or leave split out: train)" if "train" in splits else ""),
        )


def _needs(what: str, package: str, extra: str) -> DataError:
    return DataError(f"reading {what} needs the {package} package", where="datasets", fix=f"pip install 'traitwatch[{extra}]'")


def _datasets_module(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise _needs(what, "datasets", "datasets") from None
    return datasets


def _load_hub(src: DataSourceSpec) -> Any:
    datasets = _datasets_module(f"hub dataset {src.hub}")
    try:
        return datasets.load_dataset(src.hub, name=src.subset, revision=src.revision, split=src.split)
    except ValueError as exc:
        _raise_split(exc, src, src.label())
        raise _load_error(exc, src) from None
    except Exception as exc:  # the hub and the cache fail in many ways (ConnectionError, FileNotFoundError, ...)
        raise _load_error(exc, src) from None


def _raise_split(exc: ValueError, src: DataSourceSpec, where: str) -> None:
    """Turn datasets' 'Unknown split "x". Should be one of [...]' into our error."""
    text = str(exc)
    if text.startswith("Unknown split"):
        have = text.split("Should be one of", 1)[-1].strip(" .[]").replace("'", "").split(", ") if "Should be one of" in text else []
        _one_split(src, where, [h for h in have if h] or ["train"], "the dataset")


def _load_error(exc: Exception, src: DataSourceSpec) -> DataError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return DataError(
        f"cannot load the dataset: {type(exc).__name__}: {first}",
        where=src.label(),
        fix=(
            "check hub, subset and revision; without network the dataset must already be in the local "
            f"Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1); see {_DOCS}"
        ),
    )


def _load_folder(src: DataSourceSpec, path: Path) -> tuple[Any, str]:
    """A folder written by ``save_to_disk`` (one dataset, or a dict of splits), else a local
    copy of a hub dataset (data files that ``datasets.load_dataset`` reads)."""
    datasets = _datasets_module(f"the dataset folder {path}")
    if (path / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(str(path))
        _one_split(src, str(path), list(splits), "this dataset folder")
        return splits[src.split], f"{path}[{src.split}]"
    if (path / "state.json").exists():
        data = datasets.load_from_disk(str(path))
        named = str(data.split) if data.split is not None else "train"
        _one_split(src, str(path), list(dict.fromkeys([named, "train"])), "this dataset folder (one split)")
        return data, str(path)
    try:
        data = datasets.load_dataset(str(path), name=src.subset, split=src.split)
    except ValueError as exc:
        _raise_split(exc, src, str(path))
        raise _folder_error(exc, path) from None
    except Exception as exc:
        raise _folder_error(exc, path) from None
    return data, f"{path}[{src.split}]"


def _folder_error(exc: Exception, path: Path) -> DataError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return DataError(
        f"not a dataset folder datasets can read ({type(exc).__name__}: {first})",
        where=str(path),
        fix=f"point at a folder written by Dataset.save_to_disk, a folder of data files, or a .jsonl/.parquet file ({_DOCS})",
    )


def _mapping(have: list[str], src: DataSourceSpec, where: str) -> dict[str, str]:
    """The column mapping for a table with columns ``have``, checked against them up front."""
    cols = detect_columns(have, _columns(src))
    if cols is None:
        raise DataError(
            f"no 'messages' column, nor 'prompt' and 'completion' (columns: {', '.join(have) or 'none'})",
            where=where,
            fix="map them: columns: {prompt: <column>, completion: <column>} or columns: {messages: <column>} " + f"({_DOCS})",
        )
    for role, col in cols.items():
        if col not in have:
            raise DataError(
                f"columns.{role} names the column '{col}', which the data does not have (columns: {', '.join(have) or 'none'})",
                where=where,
                fix=f"name one of the data's columns in columns: ({_DOCS})",
            )
    return cols


def _row_fix(cols: dict[str, str]) -> str:
    if "messages" in cols:
        col = cols["messages"]
        return f"each row's '{col}' must be a list of {{role, content}} messages with an assistant turn ({_DOCS}; rows count from 1)"
    return (
        f"each row needs a string (or a list of messages) in '{cols['prompt']}' and in '{cols['completion']}' ({_DOCS}; rows count from 1)"
    )


def _examples(rows: Iterator[dict[str, Any]], cols: dict[str, str], label: str) -> ChatDataset:
    examples: list[ChatExample] = []
    bad: list[tuple[int, str, str]] = []
    for n, row in enumerate(rows, start=1):
        msgs, problem = to_messages(row, cols)
        if problem is not None:
            bad.append((n, problem, _row_fix(cols)))
            continue
        assert msgs is not None
        examples.append(ChatExample(msgs, n))
    return finish(label, examples, bad, at=" row ", unit="row", empty_fix="use a split with rows")


def _from_dataset(data: Any, src: DataSourceSpec, label: str, limit: int | None) -> ChatDataset:
    """A ``datasets.Dataset``: only the mapped columns are read, in batches, as Arrow."""
    cols = _mapping(list(data.column_names), src, label)
    if limit is not None and limit < len(data):
        data = data.select(range(limit))
    table = data.select_columns(list(dict.fromkeys(cols.values()))).with_format("arrow")

    def rows() -> Iterator[dict[str, Any]]:
        for batch in table.iter(batch_size=BATCH):
            yield from batch.to_pylist()

    return _examples(rows(), cols, label)


def _from_parquet(path: Path, src: DataSourceSpec, limit: int | None) -> ChatDataset:
    """A parquet file, read with pyarrow alone (no datasets cache written)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _needs(f"the parquet file {path}", "pyarrow", "parquet") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow.ArrowInvalid and friends: not a parquet file, truncated
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"not a readable parquet file ({first})", where=str(path), fix="check the file (.jsonl for JSON lines)") from None
    cols = _mapping(list(pf.schema_arrow.names), src, str(path))

    def rows() -> Iterator[dict[str, Any]]:
        left = limit
        for batch in pf.iter_batches(batch_size=BATCH, columns=list(dict.fromkeys(cols.values()))):
            chunk = batch.to_pylist()
            if left is not None:
                chunk, left = chunk[:left], left - len(chunk[:left])
            yield from chunk
            if left == 0:
                return

    return _examples(rows(), cols, str(path))
