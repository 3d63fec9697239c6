"""From a study's ``datasets`` entries to the training file of every (domain, level).

Why: the study spec names data three ways (a folder in the published layout, a file per
level, or the generated demo); training only wants "the examples of this domain at this
level". Generated data lands in the study's output folder so the study is self-contained.
"""

from __future__ import annotations

from pathlib import Path

from traitwatch.config import DatasetSpec, Level
from traitwatch.errors import DataError

from ._chat import ChatDataset, load_chat_jsonl
from ._demo import write_demo_dataset


def dataset_path(ds: DatasetSpec, level: Level, output_dir: Path) -> Path:
    """The JSONL file holding ``level`` of ``ds`` (writing the demo data if needed)."""
    if ds.demo is not None:
        return write_demo_dataset(output_dir / "data" / ds.domain, ds.demo, (level,))[level]
    path = ds.level_path(level)
    if path is None:
        raise DataError(
            f"domain '{ds.domain}' has no '{level}' file",
            where=f"datasets[{ds.domain}]",
            fix=f"add '{level}: <file.jsonl>' to the domain or drop '{level}' from the study's levels",
        )
    return path


def load_level(ds: DatasetSpec, level: Level, output_dir: Path) -> ChatDataset:
    """Load and validate the examples of one (domain, level)."""
    return load_chat_jsonl(dataset_path(ds, level, output_dir), limit=ds.limit)
