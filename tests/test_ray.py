"""The Ray executor on a real local Ray cluster (2 worker processes): the tiny study trained and
answered as Ray tasks, a worker killed (SIGKILL) while it runs a task, and the store compared
with an uninterrupted Ray run's, row by row."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tiny import write_study
from traitwatch.cli import app

#: What must be equal between two runs of the same study (timestamps, paths and timings may differ).
TABLES = {
    "runs": "SELECT run_id, fingerprint, domain, level, seed, model, dataset_sha, n_train, n_heldout, total_steps, status FROM runs",
    "checkpoints": "SELECT run_id, step, adapter_sha, train_loss, heldout_loss, learning_rate, tokens_seen FROM checkpoints",
    "generations": "SELECT gen_key, run_id, step, suite, question_id, sample, answer, n_tokens, finish, probes FROM generations",
    "judgments": "SELECT judgment_key, judge, trait, score, method FROM judgments",
    "scores": "SELECT gen_key, judge, trait, judgment_key FROM scores",
}


def _rows(store: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
        return {name: sorted(db.execute(sql).fetchall(), key=repr) for name, sql in TABLES.items()}


def _spec(tmp: Path, name: str, tiny_study_dict: Callable[..., dict[str, Any]]) -> Path:
    spec = tiny_study_dict(
        tmp / name / "out",
        executor={"kind": "ray", "workers": 2, "block": 2, "max_retries": 3},
        judges=[{"name": "check", "kind": "check"}],
    )
    spec["training"] = spec["training"] | {"max_steps": 16, "save_every": 2}
    return write_study(tmp / name / "s.yaml", spec)


def _task_processes() -> list[int]:
    """PIDs of Ray worker processes running one of our tasks now (Ray titles them ``ray::<task>``)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(("ray::train_task", "ray::generate_task")):
            found.append(int(pid))
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_task_leaves_the_store_as_an_uninterrupted_run(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    stages = ["--stages", "train,generate,judge"]
    whole = CliRunner().invoke(app, ["run", str(_spec(tmp_path, "whole", tiny_study_dict)), *stages])
    assert whole.exit_code == 0, whole.output
    assert "(ray task)" in whole.output

    killed: list[str] = []

    def killer(stop: threading.Event) -> None:
        while not stop.is_set() and not killed:
            for pid in _task_processes():
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(title)
                break
            time.sleep(0.02)

    stop = threading.Event()
    thread = threading.Thread(target=killer, args=(stop,), daemon=True)
    thread.start()
    try:
        hurt = CliRunner().invoke(app, ["run", str(_spec(tmp_path, "killed", tiny_study_dict)), *stages])
    finally:
        stop.set()
        thread.join(5)
    assert killed, "no task process was seen running, so none was killed"
    assert hurt.exit_code == 0, hurt.output
    a, b = _rows(tmp_path / "whole" / "out" / "study.sqlite"), _rows(tmp_path / "killed" / "out" / "study.sqlite")
    assert len(a["generations"]) == 2 * 9 * 4 * 2, "2 runs x 9 checkpoints x 4 questions x 2 samples"
    for table in TABLES:
        assert a[table] == b[table], f"{table} differs after killing {killed[0]}"


def test_ray_with_a_live_monitor_is_refused_before_any_work(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    spec = tiny_study_dict(tmp_path / "out", executor={"kind": "ray"})
    spec["monitor"] = {"alarms": ["contempt"]}
    res = CliRunner().invoke(app, ["run", str(write_study(tmp_path / "s.yaml", spec)), "--stages", "train"])
    assert res.exit_code != 0
    assert "executor ray" in res.output and "traitwatch watch" in res.output
    assert not (tmp_path / "out" / "runs").exists()
