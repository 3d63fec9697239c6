"""The live monitor: alarm policy on numbers, actions on real files and a real HTTP server,
and `traitwatch run` with a monitor on a tiny study (alarms stored, run stopped, nothing redone)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tiny import write_study
from traitwatch.cli import app
from traitwatch.config import MonitorSpec, load_study
from traitwatch.monitor import Alarm, AlarmPolicy, Cadence, Rule, act, request_stop, stop_requested
from traitwatch.store import Store

RULE = Rule(trait="t", judge="j", detector="threshold", params={"delta": 10, "persist": 1}, min_rise=10)


def _feed(policy: AlarmPolicy, values: list[float], run: str = "r", steps: list[int] | None = None) -> list[Alarm]:
    out = []
    for step, v in zip(steps or [2 * i for i in range(len(values))], values, strict=True):
        out += policy.observe(run, step, {("j", "t"): (v, 1.0)})
    return out


def test_alarm_is_never_before_the_rise_and_names_the_last_safe_checkpoint() -> None:
    values = [5, 6, 4, 5, 30, 35, 40, 42]  # rises at the 5th checkpoint (step 8)
    for cut in range(1, len(values) + 1):  # at every point in time: nothing before the rise is known
        alarms = _feed(AlarmPolicy([RULE]), values[:cut])
        assert bool(alarms) == (cut >= 5)
    [alarm] = _feed(AlarmPolicy([RULE]), values)
    assert (alarm.step, alarm.onset_step, alarm.last_safe_step) == (8, 8, 6)
    assert alarm.baseline == 5 and alarm.value == 30 and "last safe checkpoint: step 6" in alarm.message


def test_min_rise_and_consecutive_hold_the_alarm_back() -> None:
    values = [50, 50, 62, 61, 70, 72, 73]
    strict = Rule("t", "j", "threshold", {"delta": 10, "persist": 1}, min_rise=15, consecutive=2)
    [alarm] = _feed(AlarmPolicy([strict]), values)
    assert alarm.onset_step == 4 and alarm.step == 10, "detector fires at step 4; 15 points over two checkpoints come at 8 and 10"


def test_a_falling_trait_alarms_when_its_direction_is_down_and_both_catches_either_way() -> None:
    falling = [90, 91, 89, 90, 60, 55, 50]  # coherence collapsing at the 5th checkpoint (step 8)
    assert not _feed(AlarmPolicy([RULE]), falling), "an up rule never alarms on a fall"
    down = dataclasses.replace(RULE, direction="down")
    [alarm] = _feed(AlarmPolicy([down]), falling)
    assert (alarm.step, alarm.onset_step, alarm.last_safe_step, alarm.direction) == (8, 8, 6, "down")
    assert alarm.value == 60 and alarm.baseline == 90 and "t fell in run r" in alarm.message
    assert not _feed(AlarmPolicy([down]), [5, 6, 4, 5, 30, 35]), "a down rule never alarms on a rise"
    assert not _feed(AlarmPolicy([dataclasses.replace(down, min_rise=45)]), falling), "the fall must reach min_rise"
    both = dataclasses.replace(RULE, direction="both")
    assert [a.direction for a in _feed(AlarmPolicy([both]), falling)] == ["down"]
    assert [a.direction for a in _feed(AlarmPolicy([both]), [5, 6, 4, 5, 30, 35])] == ["up"]


def test_a_replayed_checkpoint_is_ignored_and_each_rule_fires_once_per_run() -> None:
    policy = AlarmPolicy([RULE])
    assert _feed(policy, [5, 5, 40]) and not _feed(policy, [5, 5, 40, 45, 50])
    assert policy.last_step("r") == 8
    assert _feed(policy, [5, 5, 40], run="other"), "another run has its own state"
    nan = AlarmPolicy([RULE])
    assert not nan.observe("r", 0, {("j", "t"): (math.nan, math.nan)}) and nan.last_step("r") is None


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_actions_write_the_file_and_post_the_webhook(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        spec = MonitorSpec.model_validate(
            {"alarms": ["t"], "actions": ["log", "file", "webhook"], "webhook_url": url, "alarm_file": str(tmp_path / "a.jsonl")}
        )
        alarm = _feed(AlarmPolicy([RULE]), [5, 40])[0]
        assert act(alarm, spec) == []
        assert _Hook.received[-1]["alarm"]["trait"] == "t" and _Hook.received[-1]["alarm"]["last_safe_step"] == 0
        assert json.loads((tmp_path / "a.jsonl").read_text())["step"] == 2
        down = spec.model_copy(update={"webhook_url": "http://127.0.0.1:9/none", "webhook_timeout_s": 2.0})
        problems = act(alarm, down)  # a dead webhook is reported, never fatal, and the file still gets the alarm
        assert problems and "webhook failed" in problems[0]
        assert (tmp_path / "a.jsonl").read_text().count("\n") == 2
    finally:
        server.shutdown()


def test_stop_requests_round_trip(tmp_path: Path) -> None:
    assert stop_requested(tmp_path) is None
    alarm = _feed(AlarmPolicy([RULE]), [5, 40])[0]
    request_stop(tmp_path, alarm)
    assert stop_requested(tmp_path)["trait"] == "t"  # type: ignore[index]


# -- `traitwatch run` with a monitor -------------------------------------------------------------
def _monitored(tmp: Path, tiny_study_dict: Callable[..., dict[str, Any]], actions: list[str], **over: Any) -> Path:
    spec = tiny_study_dict(tmp / "out", **over)
    spec["monitor"] = {
        "probes": {"questions": 2},
        # the tiny random model moves the marker's probability by tiny amounts: any rise alarms
        "alarms": [
            {
                "trait": "contempt",
                "judge": "check",
                "min_rise": 0,
                "detector": {"name": "threshold", "params": {"delta": 0, "sigmas": 0, "persist": 1}},
            }
        ],
        "actions": actions,
    }
    return write_study(tmp / "s.yaml", spec)


def test_run_with_a_monitor_alarms_stops_and_a_rerun_repeats_nothing(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    path = _monitored(tmp_path, tiny_study_dict, ["log", "file", "stop"], levels=["strong"])
    res = CliRunner().invoke(app, ["run", str(path), "--stages", "train,generate,judge"])
    assert res.exit_code == 0, res.output
    assert "ALARM contempt rose in run arith-strong-s0" in res.output and "(stopped early)" in res.output
    out = tmp_path / "out"
    ckdir = out / "runs" / "arith-strong-s0" / "checkpoints"
    with Store(out / "study.sqlite", readonly=True) as store:
        [alarm] = store.alarms()
        assert alarm["info"]["last_safe_step"] is not None and alarm["info"]["last_safe_step"] < alarm["step"]
        assert [c.step for c in store.checkpoints()][-1] == alarm["step"], "training stopped at the alarm's checkpoint"
        assert store.runs()[0]["status"] == "stopped_early"
        n_gen = len(store.generations())
        n_judged = store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    assert json.loads((ckdir / "STOPPED.json").read_text())["step"] == alarm["step"]
    assert (out / "alarms.jsonl").read_text().count("\n") == 1
    assert "reused: 4" in res.output, "the probe answers (2 questions x 2 checkpoints) are reused by the generate stage"
    again = CliRunner().invoke(app, ["run", str(path), "--stages", "train,generate,judge"])
    assert again.exit_code == 0 and "ALARM" not in again.output and "generated: 0" in again.output
    with Store(out / "study.sqlite", readonly=True) as store:
        assert len(store.alarms()) == 1 and len(store.generations()) == n_gen
        assert store.conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == n_judged
    assert (out / "alarms.jsonl").read_text().count("\n") == 1


def test_monitoring_does_not_change_what_is_trained(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    """The monitor runs between training steps on its own model copy, with the random state saved
    and restored: the adapters are bit-identical to an unmonitored run's (dropout on, so any
    change to the random stream would show)."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.1}
    plain = tiny_study_dict(tmp_path / "plain" / "out", levels=["strong"], lora=lora)
    a = CliRunner().invoke(app, ["run", str(write_study(tmp_path / "plain" / "s.yaml", plain)), "--stages", "train"])
    b_path = _monitored(tmp_path / "mon", tiny_study_dict, ["log"], levels=["strong"], lora=lora)
    b = CliRunner().invoke(app, ["run", str(b_path), "--stages", "train"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert "ALARM" in b.output
    for step in (2, 4, 6):
        name = Path("runs/arith-strong-s0/checkpoints") / f"step_{step:06d}" / "adapter_model.safetensors"
        x, y = load_file(tmp_path / "plain" / "out" / name), load_file(tmp_path / "mon" / "out" / name)
        assert all(torch.equal(x[k], y[k]) for k in x), step


def test_monitor_names_are_checked_when_the_spec_loads(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    spec = tiny_study_dict(tmp_path / "out")
    spec["monitor"] = {"alarms": [{"trait": "contempt", "judge": "nobody"}]}
    res = CliRunner().invoke(app, ["validate", str(write_study(tmp_path / "s.yaml", spec))])
    assert res.exit_code == 2 and "unknown judge 'nobody'" in res.output
    spec["monitor"] = {"alarms": ["contempt"], "actions": ["webhook"]}
    res = CliRunner().invoke(app, ["validate", str(write_study(tmp_path / "s.yaml", spec))])
    assert res.exit_code == 2 and "webhook_url" in res.output
    assert yaml.safe_load((tmp_path / "s.yaml").read_text())["monitor"]["actions"] == ["webhook"]


def test_the_live_monitor_takes_each_rule_direction_from_the_analysis(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    from traitwatch.pipeline import StudyContext
    from traitwatch.pipeline._monitor import LiveMonitor

    spec = tiny_study_dict(tmp_path / "out", analysis={"directions": {"contempt": "down"}})
    spec["monitor"] = {"alarms": ["contempt", "wrong_answer"]}
    path = write_study(tmp_path / "s.yaml", spec)
    with Store(tmp_path / "store.sqlite") as store:
        mon = LiveMonitor(StudyContext(load_study(path)), store)
        assert {r.trait: r.direction for r in mon.policy.rules} == {"contempt": "down", "wrong_answer": "up"}


def test_max_overhead_skips_due_checkpoints_that_would_go_over_the_budget() -> None:
    """Cadence on a clock we set: every 2nd checkpoint is due, the first of each run always;
    with max_overhead 0.5 a due one is evaluated only if (its expected cost + what was spent)
    stays within half the training time so far."""
    clock = [0.0]
    cadence = Cadence(every=2, max_overhead=0.5, clock=lambda: clock[0])
    offered = []
    for t, step, spent in [(0, 0, 1.0), (1.5, 1, 0), (2, 2, 0), (5, 3, 0), (6, 4, 0), (6, 4, 0)]:
        clock[0] = t
        due = cadence.due("r", step, list)
        offered.append(due)
        if due and spent:
            cadence.charge(spent, evaluation=True)
    # step 2: 2 s (1 spent + 1 expected) > 0.5 x 1 s of training; step 4: 2 s <= 0.5 x 5 s
    assert offered == [True, False, False, False, True, False]
    assert cadence.skipped == 1
    assert cadence.due("other", 0, list), "a run's first checkpoint (its baseline) is always evaluated"
    resumed = Cadence(every=2, max_overhead=None)
    assert not resumed.due("r", 6, lambda: [0, 2, 4]), "a resumed run counts its stored checkpoints: 6 is the 4th"
    assert Cadence(every=1, max_overhead=None).due("r", 6, lambda: [0, 2, 4])


def test_a_tight_max_overhead_evaluates_only_the_baseline_and_a_rerun_adds_nothing(
    tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    path = _monitored(tmp_path, tiny_study_dict, ["log"], levels=["strong"])
    spec = yaml.safe_load(path.read_text())
    spec["monitor"]["max_overhead"] = 1e-9
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(app, ["run", str(path), "--stages", "train"])
    assert res.exit_code == 0, res.output
    assert "due checkpoints skipped to stay within max_overhead" in res.output and "ALARM" not in res.output
    with Store(tmp_path / "out" / "study.sqlite", readonly=True) as store:
        assert {g.step for g in store.generations()} == {0}
        n = len(store.generations())
        assert len(store.checkpoints()) > 2
    from traitwatch.pipeline import StudyContext
    from traitwatch.pipeline._monitor import LiveMonitor

    with Store(tmp_path / "out" / "study.sqlite") as store:  # a restarted monitor replays the run
        mon = LiveMonitor(StudyContext(load_study(path)), store)
        [run] = store.runs()
        mon.catch_up(run["run_id"], 1 << 62, run["fingerprint"])
        assert len(store.generations()) == n and mon.evaluated == 1, "only the stored baseline is replayed; skipped ones stay skipped"
