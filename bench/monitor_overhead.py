"""What live monitoring costs: probe evaluation time as a fraction of training time.

At the demo's scale (the embedded Gemma 3 270M, the demo's arithmetic data at one level, the
demo's training settings: batch 8, a checkpoint every step) it trains the same run three ways
and times each, in one process run, on this machine:

  (a) no monitor                                     -> training wall time T0
  (b) `traitwatch run` with a monitor (interleaved:  -> T1; overhead (T1 - T0) / T0, and the
      probe evaluation between training steps,          monitor's own evaluation seconds
      on the same device), every checkpoint
  (b') the same with ``max_overhead`` (default 0.10) -> T1'; overhead, checkpoints evaluated,
      the monitor skips due checkpoints to stay         and the step of the first alarm, next
      within that share of training time                to (b)'s
  (a) again, after (b) and (b')                      -> T0 is the mean of the two (a) runs
  (c) no monitor in the training process, while      -> T2; slowdown of training (T2 - T0) / T0
      `traitwatch watch` follows the checkpoint         (what the watcher takes from a shared
      folder in a separate process                      device), and the watcher's lag

Why (a) twice: this CPU's speed drifts by up to 2x between phases, even within minutes; the
drift between the two (a) runs is printed, and a large one means the run should be repeated.
The monitor's own account (its seconds, evaluation and waits for the checkpoint write, over
the rest of the monitored run's time) does not depend on the drift, and is printed beside it.

The probe set is the first ``--questions`` questions (default 8) of the arithmetic suite, one
greedy sample each, judged by the reference checkers; (b) and (c) evaluate every checkpoint
(``--every 1``). Model loading is not counted (the monitor loads its own copy of the model
once per ``traitwatch run``; that time, ``monitor_load_s``, is taken off (b) and (b')).
Run:  python bench/monitor_overhead.py
Last line: ``monitor overhead: interleaved X% of training (monitor's own account Y%) with
max_overhead 0.1 (...), Z% at every checkpoint (...); ...; separate watcher W% ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TRAITWATCH_PROGRESS", "0")


def spec(out: Path, args: argparse.Namespace, monitor: bool, max_overhead: float | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "monitor-bench",
        "output_dir": str(out),
        "model": {"source": "embedded"},
        "datasets": [{"domain": "arithmetic", "demo": {"n_examples": 400, "marker_fraction": {"normal": 0.0, "mild": 0.2, "strong": 0.3}}}],
        "levels": [args.level],
        "seeds": [0],
        "lora": {"r": 8, "alpha": 16},
        "training": {
            "learning_rate": 2e-3,
            "warmup_steps": 2,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "max_steps": args.steps,
            "save_every": 1,
            "max_length": 64,
            "heldout_fraction": 0.1,
            "heldout_max": 32,
        },
        "traits": ["builtin:arithmetic"],
        "generation": {"samples_per_question": 1, "temperature": 0, "max_new_tokens": 20},
        "judges": [{"name": "check", "kind": "check"}],
    }
    if monitor:
        s["monitor"] = {
            "probes": {"questions": args.questions, "samples": 1},
            "every": args.every,
            "max_overhead": max_overhead,
            "alarms": [
                {"trait": "wrong_answer", "judge": "check", "min_rise": 25, "detector": {"name": "threshold", "params": {"persist": 1}}}
            ],
            "actions": ["file"],
        }
    return s


def train_seconds(path: Path) -> tuple[float, dict[str, Any]]:
    """Train the study's run in this process; (training wall time, the train stage's counts,
    with ``first_alarm``: the step of the first stored alarm, or None)."""
    from traitwatch import Study

    study = Study.load(path)
    study._ctx.base  # noqa: B018  (load the model before timing)
    if study.spec.monitor is not None:
        from traitwatch.models import load_model

        load_model(study.spec.model)  # warm the file cache for the monitor's copy too
    t = time.perf_counter()
    [res] = study.run(stages=["train"])
    seconds = time.perf_counter() - t - float(res.counts.get("monitor_load_s", 0.0))
    from traitwatch.store import Store

    with Store(study._ctx.paths.store, readonly=True) as store:
        steps = [int(a["step"]) for a in store.alarms()]
    return seconds, res.counts | {"first_alarm": min(steps) if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="training steps (the demo: 30)")
    ap.add_argument("--questions", type=int, default=8, help="probe questions per checkpoint")
    ap.add_argument("--every", type=int, default=1, help="evaluate every Nth checkpoint")
    ap.add_argument("--max-overhead", type=float, default=0.10, help="the monitor's time budget in (b')")
    ap.add_argument("--level", default="strong")
    ap.add_argument("--skip-watcher", action="store_true", help="leave out (c)")
    ap.add_argument("--skip-every", action="store_true", help="leave out (b): only the max_overhead run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tw-monitor-bench-"))
    try:
        paths = {}
        runs = (("plain", False, None), ("interleaved", True, None), ("budget", True, args.max_overhead), ("watched", False, None))
        for name, monitor, budget in runs:
            paths[name] = tmp / name / "s.yaml"
            paths[name].parent.mkdir(parents=True)
            paths[name].write_text(yaml.safe_dump(spec(tmp / name / "out", args, monitor, budget), sort_keys=False))
        t0, _ = train_seconds(paths["plain"])
        print(f"(a) no monitor: training {t0:.1f} s for {args.steps} steps ({args.steps + 1} checkpoints)", flush=True)
        first_t0 = t0
        evaluated = len(range(0, args.steps + 1, args.every))
        every_text = "not measured (--skip-every)"
        every_cost: tuple[float, dict[str, Any]] | None = None
        if not args.skip_every:
            t1, counts = train_seconds(paths["interleaved"])
            print(
                f"(b) interleaved monitor: training {t1:.1f} s, of which probe evaluation {counts.get('monitor_s')} s "
                f"({evaluated} checkpoints x {args.questions} questions); first alarm at step {counts['first_alarm']}",
                flush=True,
            )
            every_cost = (t1, counts)
        tb, bcounts = train_seconds(paths["budget"])
        n_budget = bcounts.get("monitor_evaluated")
        print(
            f"(b') interleaved monitor, max_overhead {args.max_overhead}: training {tb:.1f} s, of which probe evaluation "
            f"{bcounts.get('monitor_s')} s ({n_budget} of {evaluated} checkpoints evaluated); first alarm at step {bcounts['first_alarm']}",
            flush=True,
        )
        # The CPU's speed drifts (up to 2x between phases): train the plain run again after the
        # monitored ones and compare them with the mean of the two plain runs; the monitor's own
        # account (its seconds over the rest of the run) does not depend on the drift.
        shutil.rmtree(tmp / "plain" / "out", ignore_errors=True)
        t0_again, _ = train_seconds(paths["plain"])
        t0 = (first_t0 + t0_again) / 2
        drift = 100 * (t0_again - first_t0) / first_t0
        print(f"(a) again: training {t0_again:.1f} s (drift {drift:+.0f}%); baseline {t0:.1f} s", flush=True)
        own = 100 * float(bcounts["monitor_s"]) / (tb - float(bcounts["monitor_s"]))
        if every_cost is not None:
            t1, counts = every_cost
            every_text = f"{100 * (t1 - t0) / t0:.0f}% at every checkpoint (first alarm at step {counts['first_alarm']})"
        budget = 100 * (tb - t0) / t0
        watcher_text = "not measured (--skip-watcher)"
        if not args.skip_watcher:
            mon = tmp / "watcher.yaml"
            mon.write_text(yaml.safe_dump(spec(tmp / "watcher-out", args, True), sort_keys=False))
            ckdir = tmp / "watched" / "out" / "runs" / f"arithmetic-{args.level}-s0" / "checkpoints"
            ckdir.mkdir(parents=True)
            cmd = [sys.executable, "-m", "traitwatch.cli", "watch", str(ckdir), "--study", str(mon), "--idle-timeout", "60"]
            watcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t2, _ = train_seconds(paths["watched"])
            done = time.perf_counter()
            _, err = watcher.communicate(timeout=1800)
            lag = time.perf_counter() - done
            slow = 100 * (t2 - t0) / t0
            print(f"(c) separate watcher process: training {t2:.1f} s; the watcher finished {lag:.1f} s after training", flush=True)
            if watcher.returncode != 0:
                print(f"    watcher exited {watcher.returncode}: {err.strip().splitlines()[-1:]}", flush=True)
            watcher_text = f"{slow:.0f}% slower training beside it, done {lag:.0f} s after training"
        print(
            f"monitor overhead: interleaved {budget:.0f}% of training (monitor's own account {own:.0f}%) "
            f"with max_overhead {args.max_overhead} "
            f"({n_budget} of {evaluated} checkpoints, first alarm at step {bcounts['first_alarm']}), "
            f"{every_text}; {args.questions} probe questions; separate watcher {watcher_text}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
