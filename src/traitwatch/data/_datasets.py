"""From a study's ``datasets`` entries to the training data of every (domain, condition).

Why: the study spec names data several ways (a folder in the published layout, a file or a
Hugging Face dataset per level or named condition, or the generated demo); training only
wants "the examples of this domain in this condition". Generated data lands in the study's
output folder so the study is self-contained.
"""

from __future__ import annotations

from pathlib import Path

from traitwatch.config import LEVELS, DatasetSpec, DataSourceSpec
from traitwatch.errors import DataError

from ._chat import ChatDataset
from ._demo import write_demo_dataset
from ._sources import load_source


def condition_source(ds: DatasetSpec, condition: str, output_dir: Path) -> DataSourceSpec:
    """Where the data of ``condition`` of ``ds`` is (writing the demo data if needed)."""
    if ds.demo is not None:
        level = next((lv for lv in LEVELS if lv == condition), None)
        if level is None:
            raise DataError(
                f"the demo domain '{ds.domain}' has only the levels {', '.join(LEVELS)}, not '{condition}'",
                where=f"datasets[{ds.domain}]",
                fix=f"drop '{condition}' from the study's levels, or give '{ds.domain}' files instead of demo",
            )
        return DataSourceSpec(path=write_demo_dataset(output_dir / "data" / ds.domain, ds.demo, (level,))[level])
    src = ds.source(condition)
    if src is None:
        where = f"'{condition}: <file.jsonl>'" if condition in LEVELS else f"'{condition}: <file>' under its conditions"
        raise DataError(
            f"domain '{ds.domain}' has no '{condition}' {'file' if condition in LEVELS else 'data'}",
            where=f"datasets[{ds.domain}]",
            fix=f"add {where} to the domain or drop '{condition}' from the study's levels",
        )
    return src


def load_level(ds: DatasetSpec, level: str, output_dir: Path) -> ChatDataset:
    """Load and check the examples of one (domain, level or named condition)."""
    return load_source(condition_source(ds, level, output_dir), limit=ds.limit)


#: The same, by its general name.
load_condition = load_level
