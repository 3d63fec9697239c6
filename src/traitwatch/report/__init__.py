"""The HTML report (self-contained, escaped) and paper-style PNG figures."""

from ._html import write_report

__all__ = [
    "write_report",
]
