"""Experiment trackers: the tiny study logged to MLflow, TensorBoard and W&B, read back with
each library's own reader, equal to the analysis, and a rerun adds no duplicate points.

Nothing goes to the network: MLflow logs to a SQLite file, W&B runs offline, telemetry is off.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tiny import TinyStudy
from traitwatch.cli import app
from traitwatch.errors import ConfigError
from traitwatch.trackers import names

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

STRONG = "arith-strong-s0"
NORMAL = "arith-normal-s0"
MEAN = names.trait("check", "wrong_answer", "mean")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output + (repr(res.exception) if res.exception else "")
    return res.output


def _analysis(study: TinyStudy) -> Any:
    import traitwatch as tw

    return tw.Study.load(study.yaml).analysis()


def _mlflow_runs(out: Path, experiment: str = "tiny") -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(by_name) == len(runs), "one MLflow run per traitwatch run"
    return {"client": client, "runs": by_name}


def _history(client: Any, run: Any, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B transaction log (``run-<id>.wandb``), parsed with wandb's own
    protobuf messages (``wandb.proto``). wandb 0.31 has no Python reader of the framing, a
    LevelDB-style log: a 7-byte file header (``:W&B``, magic, version), 32 KiB blocks, each
    record chunk behind a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, buf, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def _wandb_history(out: Path, run: str) -> dict[str, Any]:
    """History (step, values), summary and config of the run's one offline copy."""
    (folder,) = sorted((out / "wandb").glob(f"offline-run-*-tiny-{run}"))
    history: list[tuple[int, dict[str, Any]]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}

    def key(item: Any) -> str:
        return item.key or ".".join(item.nested_key)

    for rec in _wandb_records(folder / f"run-tiny-{run}.wandb"):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append((rec.history.step.num, {key(i): json.loads(i.value_json) for i in rec.history.item}))
        elif kind == "summary":
            summary |= {key(i): json.loads(i.value_json) for i in rec.summary.update}
        elif kind == "config":
            config |= {key(i): json.loads(i.value_json) for i in rec.config.update}
    return {"history": sorted(history, key=lambda h: h[0]), "summary": summary, "config": config}


def _curve(analysis: Any, run: str, trait: str = "wrong_answer", judge: str = "check") -> list[tuple[int, float]]:
    c = analysis.curve(run, judge, trait).curve
    return [(int(s), float(m)) for s, m in zip(c.steps, c.mean, strict=True) if math.isfinite(m)]


def test_track_logs_to_all_three_and_a_rerun_adds_nothing(tiny_study_copy: TinyStudy) -> None:
    from traitwatch.store import Store

    out = tiny_study_copy.out
    with Store(out / "study.sqlite") as store:  # a live monitor's alarm, as the monitor stores it
        store.add_alarm(STRONG, 2, "check", "wrong_answer", "threshold", "wrong_answer rose")
    printed = _cli("track", str(tiny_study_copy.yaml), "--tracker", "mlflow", "--tracker", "tensorboard", "--tracker", "wandb")
    assert "mlflow ui --backend-store-uri sqlite:///" in printed and "tensorboard --logdir" in printed and "wandb sync" in printed
    analysis = _analysis(tiny_study_copy)
    want = _curve(analysis, STRONG)
    assert len(want) >= 3
    curve = analysis.curve(STRONG, "check", "wrong_answer").curve
    heldout = sorted((c.step, c.heldout_loss) for c in analysis.checkpoints[STRONG] if c.heldout_loss is not None)
    onset = analysis.onset(STRONG, "check", "wrong_answer")

    # MLflow, read with MlflowClient from the SQLite backend
    ml = _mlflow_runs(out)
    client, runs = ml["client"], ml["runs"]
    assert set(runs) == {STRONG, NORMAL, names.SUMMARY_RUN}
    strong = runs[STRONG]
    assert _history(client, strong, MEAN) == want
    low = _history(client, strong, names.trait("check", "wrong_answer", "ci_low"))
    assert [v for _, v in low] == [float(x) for x in curve.lo if math.isfinite(x)]
    assert _history(client, strong, names.HELDOUT_LOSS) == heldout
    alarm = _history(client, strong, names.alarm("check", "wrong_answer", "threshold"))
    assert alarm == [(s, 1.0 if s >= 2 else 0.0) for s, _ in _history(client, strong, names.HELDOUT_LOSS)]
    assert strong.data.params["training.max_steps"] == "6" and strong.data.params["run.level"] == "strong"
    assert strong.data.tags["traitwatch.study"] == "tiny"
    if onset is not None and onset.step is not None:
        assert strong.data.metrics[names.onset("check", "wrong_answer", "consensus", "step")] == onset.step
    lead = next(ld for ld in analysis.leads if (ld.run_id, ld.judge, ld.detector) == (STRONG, "check", "consensus"))
    lead_key = names.lead("check", "wrong_answer", "contempt", "consensus", "steps")
    assert strong.data.metrics.get(lead_key) == (None if lead.lead_steps is None else float(lead.lead_steps))
    row = next(r for r in analysis.interventions if (r["run_id"], r["judge"], r["policy"]) == (STRONG, "check", "fraction-0.5"))
    stop_key = names.intervention("check", "wrong_answer", "contempt", "fraction-0.5", "stop_step")
    assert strong.data.metrics[stop_key] == row["stop_step"]
    summary = runs[names.SUMMARY_RUN].data.metrics
    assert summary[names.intervention("check", "wrong_answer", "contempt", "fraction-0.5", "runs")] == 2

    # TensorBoard, read with its EventAccumulator (event files store float32)
    tb = out / "tensorboard"
    got = _tb_scalars(tb / STRONG, MEAN)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-6)
    loss = _tb_scalars(tb / STRONG, names.HELDOUT_LOSS)
    assert [s for s, _ in loss] == [s for s, _ in heldout]
    assert [v for _, v in loss] == pytest.approx([v for _, v in heldout], rel=1e-6)

    # W&B offline run files, read with wandb's own reader
    wb = _wandb_history(out, STRONG)
    assert [(s, v[MEAN]) for s, v in wb["history"] if MEAN in v] == want
    assert wb["summary"][stop_key] == row["stop_step"]
    assert wb["config"]["run.level"] == "strong"

    # Rerun: no duplicated points anywhere
    before = {k: _history(client, strong, k) for k in (MEAN, names.HELDOUT_LOSS)}
    _cli("track", str(tiny_study_copy.yaml), "--tracker", "mlflow", "--tracker", "tensorboard", "--tracker", "wandb")
    again = _mlflow_runs(out)
    assert set(again["runs"]) == set(runs)
    assert again["runs"][STRONG].info.run_id == strong.info.run_id, "same content: the MLflow run is kept as it is"
    assert {k: _history(client, again["runs"][STRONG], k) for k in before} == before
    assert len(list((tb / STRONG).glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in _tb_scalars(tb / STRONG, MEAN)] == [s for s, _ in want]
    assert len(list((out / "wandb").glob(f"offline-run-*-tiny-{STRONG}"))) == 1
    wb = _wandb_history(out, STRONG)
    assert [(s, v[MEAN]) for s, v in wb["history"] if MEAN in v] == want


def test_changed_content_rewrites_the_mlflow_run(tiny_study_copy: TinyStudy) -> None:
    """A changed analysis (here fewer bootstrap replicates: other CIs) replaces the MLflow run:
    still one run per traitwatch run, one point per step, the new values."""
    _cli("track", str(tiny_study_copy.yaml), "--tracker", "mlflow")
    first = _mlflow_runs(tiny_study_copy.out)["runs"][STRONG]
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    spec["analysis"]["bootstrap"] = 20
    tiny_study_copy.yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    _cli("track", str(tiny_study_copy.yaml), "--tracker", "mlflow")
    ml = _mlflow_runs(tiny_study_copy.out)
    second = ml["runs"][STRONG]
    assert second.info.run_id != first.info.run_id
    assert second.data.params["analysis.bootstrap"] == "20"
    curve = _analysis(tiny_study_copy).curve(STRONG, "check", "wrong_answer").curve
    high = _history(ml["client"], second, names.trait("check", "wrong_answer", "ci_high"))
    assert [v for _, v in high] == [float(x) for x in curve.hi if math.isfinite(x)]


def test_spec_trackers_run_as_a_stage(tiny_study_copy: TinyStudy) -> None:
    """``trackers:`` in the spec, relative paths against the YAML's folder, ``run --stages``."""
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    spec["trackers"] = [{"kind": "tensorboard", "log_dir": "tb"}]
    tiny_study_copy.yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    printed = _cli("run", str(tiny_study_copy.yaml), "--stages", "analyze,track")
    assert "track" in printed
    folder = tiny_study_copy.yaml.parent / "tb" / STRONG
    assert [s for s, _ in _tb_scalars(folder, MEAN)] == [s for s, _ in _curve(_analysis(tiny_study_copy), STRONG)]


def test_no_trackers_skips_the_stage_and_track_says_how(tiny_study_copy: TinyStudy) -> None:
    printed = _cli("run", str(tiny_study_copy.yaml), "--stages", "analyze,track")
    assert "track" not in printed.replace("tracker", "")
    res = CliRunner().invoke(app, ["track", str(tiny_study_copy.yaml)])
    assert res.exit_code == 2 and "no trackers" in res.output and "--tracker" in res.output
    res = CliRunner().invoke(app, ["track", str(tiny_study_copy.yaml), "--tracker", "neptune"])
    assert res.exit_code == 2 and "unknown tracker 'neptune'" in res.output


def test_missing_package_is_one_line_with_the_install_command(tiny_study_copy: TinyStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = CliRunner().invoke(app, ["track", str(tiny_study_copy.yaml), "--tracker", "wandb"])
    assert res.exit_code == 2
    assert "the wandb tracker needs the package 'wandb'" in res.output and "pip install 'traitwatch[trackers]'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    from traitwatch.trackers import require

    with pytest.raises(ConfigError, match=r"traitwatch\[trackers\]"):
        require("mlflow")


def test_tracker_keys_are_checked_per_kind(tmp_path: Path, tiny_study_dict: Any) -> None:
    from traitwatch.config import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path / "out", trackers=[{"kind": "mlflow", "log_dir": "x"}])))
    with pytest.raises(ConfigError, match="log_dir") as err:
        load_study(path)
    assert "kind: tensorboard" in str(err.value)
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path / "out", trackers=[{"kind": "comet"}])))
    with pytest.raises(ConfigError, match="unknown kind"):
        load_study(path)
