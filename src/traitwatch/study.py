"""The Python face of traitwatch: load or open a study, run stages, read results as DataFrames.

Why: researchers work in notebooks. ``Study`` runs the same pipeline as the CLI (same
stages, same idempotence, same lock) and hands back what ``analyze`` computes as pandas
DataFrames, so a curve can be plotted or a lead re-tested without parsing CSV files::

    import traitwatch as tw
    study = tw.Study.load("study.yaml")          # or tw.Study.open("path/to/output_dir")
    study.run(stages=["train", "generate"])
    study.scores()                               # one row per (answer, judge, trait)
    study.curves(); study.onsets(); study.leads()
    study.interventions()                        # what stopping early keeps and avoids, per policy

It works inside a running event loop (Jupyter): judges that talk to an API run their own
loop on a worker thread when the caller's thread already has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from traitwatch.config import StudySpec, load_study, parse_study
from traitwatch.errors import StoreError
from traitwatch.pipeline import STAGES, StageResult, StudyContext, StudyPaths, analyze, run_stages
from traitwatch.pipeline._context import with_output_dir
from traitwatch.store import StudyLock

if TYPE_CHECKING:
    import pandas as pd

    from traitwatch.analysis import StudyAnalysis
    from traitwatch.train import TrainCallback

#: Columns of :meth:`Study.scores`, in order.
SCORE_COLUMNS = ("run", "domain", "level", "seed", "step", "trait", "suite", "question_id", "sample", "judge", "score", "answer")


class Study:
    """One study: its spec, its output folder, and what is stored there."""

    def __init__(self, spec: StudySpec, *, runs: Sequence[str] | None = None) -> None:
        self._ctx = StudyContext(spec, runs=runs)
        self._analysis: StudyAnalysis | None = None

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, runs: Sequence[str] | None = None, output_dir: str | Path | None = None) -> Study:
        """A study from its YAML spec (validated; errors name the file and line).

        ``runs``: fnmatch globs on run ids (``["arith-strong-*"]``); ``run`` then trains,
        generates and judges only those runs (each glob must match a planned run).
        ``output_dir``: write the study there instead of the spec's ``output_dir`` (with the
        store). Together: one job of a study split over machines; ``traitwatch merge`` joins them.
        """
        spec = load_study(path)
        if output_dir is not None:
            spec = with_output_dir(spec, Path(output_dir))
        return cls(spec, runs=runs)

    @classmethod
    def open(cls, path: str | Path) -> Study:
        """A stored study from its output folder (or its ``study.sqlite``), using the spec it ran with."""
        out = Path(path)
        if out.is_file():
            out = out.parent
        store_path = StudyPaths(out).store
        if not store_path.exists():
            raise StoreError("no study store here", where=str(out), fix="give the study's output_dir, or use Study.load('study.yaml')")
        from traitwatch.store import Store

        with Store(store_path, readonly=True) as store:
            text = store.get_meta("spec")
        if text is None:
            raise StoreError(
                "the store holds no spec yet (training never started)",
                where=str(store_path),
                fix="use Study.load('study.yaml') for a study that has not run",
            )
        data = yaml.safe_load(text)
        if "evaluation" in data and "generation" not in data:  # stored by traitwatch before the rename
            data["generation"] = data.pop("evaluation")
        data["output_dir"] = str(out.resolve())
        return cls(parse_study(data, file=str(store_path), base=out.resolve()))

    # -- what it is --------------------------------------------------------------------------
    @property
    def spec(self) -> StudySpec:
        return self._ctx.spec

    @property
    def paths(self) -> StudyPaths:
        return self._ctx.paths

    def __repr__(self) -> str:
        return f"Study({self.spec.name!r}, output_dir={str(self.paths.out)!r})"

    # -- running -----------------------------------------------------------------------------
    def run(
        self,
        stages: Sequence[str] | None = None,
        *,
        callbacks: Sequence[TrainCallback] = (),
        on_stage: Callable[[StageResult], None] | None = None,
    ) -> list[StageResult]:
        """Run some stages (default all: train, generate, judge, analyze, report), skipping stored work.

        Holds the study's lock like the CLI does, so a notebook and a terminal cannot write the
        same study at once. Returns one result per stage (name, seconds, counts).
        """
        with StudyLock(self.paths.out):
            results, _ = run_stages(self._ctx, list(stages or STAGES), callbacks=callbacks, on_stage=on_stage)
        self._analysis = None
        return results

    # -- reading -----------------------------------------------------------------------------
    def analysis(self, *, refresh: bool = False) -> StudyAnalysis:
        """What ``analyze`` computes (curves, onsets, leads, agreement, tables); cached until ``run``."""
        if self._analysis is None or refresh:
            with self._ctx.open_store() as store:
                self._analysis, _ = analyze(self._ctx, store)
        return self._analysis

    def scores(self) -> pd.DataFrame:
        """One row per (answer, judge, trait): run, domain, level, seed, step, trait, suite,
        question_id, sample, judge, score (0-100, NaN when the judge gave none), answer."""
        import pandas as pd

        with self._ctx.open_store(readonly=True) as store:
            rows = store.answer_scores(settings_hash=self._ctx.settings_hash(store))
        frame = pd.DataFrame(rows, columns=["run_id", *SCORE_COLUMNS[1:]]).rename(columns={"run_id": "run"})
        return frame.astype({"score": float})

    def curves(self) -> pd.DataFrame:
        """One row per (run, judge, trait, step): mean score, standard error, CI, answers."""
        from traitwatch.analysis import curve_rows

        return _frame(curve_rows(self.analysis()))

    def onsets(self) -> pd.DataFrame:
        """One row per (run, judge, trait, detector): onset step and index, CI, share of replicates that found one."""
        return _frame([_flat(asdict(o)) for o in self.analysis().onsets])

    def leads(self) -> pd.DataFrame:
        """One row per (run, judge, leader, follower, detector): lead in steps and checkpoints, CI, P(leader first)."""
        return _frame([_flat(asdict(x)) for x in self.analysis().leads])

    def summary(self) -> pd.DataFrame:
        """The per-run table ``traitwatch analyze`` prints (baseline, peak, final, drift, onset, ...)."""
        return _frame([_flat(r) for r in self.analysis().summary])

    def interventions(self) -> pd.DataFrame:
        """One row per (run, judge, leader, follower, stop policy): what stopping there keeps
        and avoids (stop step, scores at the stop and at the end, task kept, spread avoided,
        false alarm, warning gained); the rows of ``analysis/interventions.csv``."""
        return _frame([_flat(r) for r in self.analysis().interventions])

    def intervention_summary(self) -> pd.DataFrame:
        """One row per (judge, leader, follower, stop policy) across runs: mean task kept with its
        bootstrap CI, spread avoided and false-alarm rates with Wilson CIs."""
        return _frame([_flat(r) for r in self.analysis().intervention_summary])


#: Columns that hold whole numbers (steps, checkpoint counts) even when every value is missing.
_WHOLE = {
    "seed",
    "step",
    "index",
    "peak_step",
    "onset_step",
    "leader_onset",
    "follower_onset",
    "lead_steps",
    "lead_checkpoints",
    "task_converged_step",
    "n",
    "stop_step",
    "final_step",
    "live_alarm_step",
    "warning_steps",
    "warning_checkpoints",
}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with the API's column names (``run``, as in :meth:`Study.scores`).

    Columns that may be missing (an onset that was not found) would be ``object``; whole
    numbers become pandas' nullable ``Int64``, other numbers and all-missing columns ``float`` (NaN).
    """
    import pandas as pd

    columns: dict[str, list[Any]] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k, [])
    for k, values in columns.items():
        values.extend(row.get(k) for row in rows)
    data: dict[str, Any] = {}
    for k, values in columns.items():
        present = [v for v in values if v is not None]
        numbers = all(isinstance(v, Real) and not isinstance(v, bool) for v in present)
        if k in _WHOLE or (present and numbers and all(isinstance(v, Integral) for v in present)):
            data[k] = pd.array([None if v is None else int(v) for v in values], dtype="Int64")
        elif numbers:
            data[k] = pd.array([float("nan") if v is None else float(v) for v in values], dtype=float)
        else:
            data[k] = values
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows))).rename(columns={"run_id": "run"})


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Split a ``ci`` pair into ``*_low`` / ``*_high`` columns, which DataFrames handle better."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if (k.startswith("ci") or k.endswith("_ci")) and (v is None or isinstance(v, (tuple, list))):
            out[f"{k}_low"] = None if v is None else v[0]
            out[f"{k}_high"] = None if v is None else v[1]
        else:
            out[k] = v
    return out
