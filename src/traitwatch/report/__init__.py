"""The HTML report (self-contained, escaped) and paper-style PNG figures."""

from ._figures import overview_png, run_plotly, run_png
from ._html import safe_json, write_report

__all__ = ["overview_png", "run_plotly", "run_png", "safe_json", "write_report"]
