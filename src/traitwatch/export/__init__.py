"""Study results written in other tools' formats (``traitwatch export --format inspect``).

Why a package of its own, not part of ``traitwatch.store``: the store's ``export`` dumps its
tables as they are and depends on nothing; the writers here render a whole study (questions,
answers, every judge's scores, the spec and model it ran with) for another tool, each behind an
optional dependency (``inspect``: the ``inspect-ai`` package). Nothing here is imported by the
rest of traitwatch, so ``import traitwatch.store`` stays light and a missing optional package
only matters to the command that needs it.

``export_inspect`` is imported on first use: it imports ``inspect_ai``, which is slow to import
and may be absent (then a :class:`~traitwatch.errors.TraitwatchError` names the extra to install).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._inspect import InspectExport, export_inspect

__all__ = ["InspectExport", "export_inspect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _inspect

        return getattr(_inspect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
