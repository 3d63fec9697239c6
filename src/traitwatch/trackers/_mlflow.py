"""MLflow: one experiment per study, one MLflow run per traitwatch run.

Why content hashes: MLflow appends every point it is given (the same step twice is two
points) and a parameter can never change, so a rerun must not simply log again. Each MLflow
run carries the hash of what it holds (tag ``traitwatch.content``); a rerun with the same
content logs nothing, and one with new content (a new checkpoint, another detector) deletes
the old MLflow run and writes the whole run afresh, so a chart never mixes two analyses.
Deleted runs stay in the database until ``mlflow gc`` removes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from traitwatch.config import MlflowTrackerSpec, StudySpec

from ._base import TrackedRun, require

#: Tags that find a study's runs again: the study, the traitwatch run, the logged content.
STUDY_TAG, RUN_TAG, CONTENT_TAG = "traitwatch.study", "traitwatch.run", "traitwatch.content"
#: MLflow's limits: parameter value length, and what one ``log_batch`` call may carry.
_MAX_PARAM_CHARS, _MAX_METRICS, _MAX_PARAMS = 6000, 1000, 100


class MlflowTracker:
    """Logs to ``tracking_uri`` (default: the local SQLite file ``<output_dir>/mlflow.db``)."""

    kind = "mlflow"

    def __init__(self, spec: MlflowTrackerSpec, study: StudySpec, out: Path) -> None:
        self.local_db = None if spec.tracking_uri else (out / "mlflow.db").resolve()
        self.uri = spec.tracking_uri or f"sqlite:///{self.local_db}"
        self.experiment = spec.experiment or study.name
        self.study = study.name
        # A local database keeps its (unused) artifact folder beside it, not in the current folder.
        self.artifacts = None if self.local_db is None else (out / "mlflow-artifacts").resolve().as_uri()

    def where(self) -> str:
        if self.local_db is not None:
            return f"mlflow ui --backend-store-uri {self.uri}"
        return f"MLflow at {self.uri}, experiment {self.experiment}"

    def log(self, runs: list[TrackedRun]) -> dict[str, int]:
        require("mlflow")
        from mlflow.tracking import MlflowClient

        if self.local_db is not None:
            self.local_db.parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment(client)
        existing: dict[str, list[Any]] = {}
        for found in self._study_runs(client, experiment_id):
            existing.setdefault(found.data.tags.get(RUN_TAG, ""), []).append(found)
        counts = {"written": 0, "unchanged": 0, "values": 0}
        for run in runs:
            digest = run.content_hash()
            same = [r for r in existing.get(run.name, []) if r.data.tags.get(CONTENT_TAG) == digest]
            for old in existing.get(run.name, []):
                if not same or old is not same[0]:
                    client.delete_run(old.info.run_id)
            if same:
                self._tags(client, same[0].info.run_id, run.tags)  # status may have changed; content has not
                counts["unchanged"] += 1
                continue
            self._write(client, experiment_id, run, digest)
            counts["written"] += 1
            counts["values"] += run.points()
        return counts

    def _experiment(self, client: Any) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return str(client.create_experiment(self.experiment, artifact_location=self.artifacts, tags={STUDY_TAG: self.study}))
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)

    def _study_runs(self, client: Any, experiment_id: str) -> list[Any]:
        """Every live MLflow run of this study in the experiment (all pages)."""
        out: list[Any] = []
        token = None
        while True:
            page = client.search_runs(
                [experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{self.study}'", max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _tags(self, client: Any, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _write(self, client: Any, experiment_id: str, run: TrackedRun, digest: str) -> None:
        from mlflow.entities import Metric, Param

        created = client.create_run(experiment_id, run_name=run.name, tags=run.tags)
        run_id = created.info.run_id
        params = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in sorted(run.params.items())]
        for i in range(0, len(params), _MAX_PARAMS):
            client.log_batch(run_id, params=params[i : i + _MAX_PARAMS])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in run.series.items() for k, v in values.items()]
        metrics += [Metric(k, v, now, run.final_step) for k, v in run.summary.items()]
        for i in range(0, len(metrics), _MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS])
        client.set_tag(run_id, CONTENT_TAG, digest)  # last: a run cut short has no hash and is rewritten
        client.set_terminated(run_id, "FINISHED")
