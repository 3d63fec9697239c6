"""Does the evaluation scale with Ray workers? The demo-sized evaluation on 1 and on 2 workers.

The demo's three runs (the embedded Gemma 3 270M, the demo's arithmetic data at normal, mild
and strong, 30 steps with a checkpoint every step: 93 checkpoints) are trained once here with
the local executor (not timed). Then their evaluation (the generate stage: every question of
the arithmetic suite at every checkpoint, as Ray tasks of ``--block`` checkpoints; and the
judge stage: the reference checkers, in the driver) runs twice on a local Ray instance, each
time into a fresh copy of the store: with 1 worker and with 2 workers, each worker one CPU
and one torch thread (``executor: {num_cpus: 1}``). Wall time includes starting Ray and each
worker's loading of the model (what a user waits for). The two stores must hold the same
answers (checked). The driver's commit rate is the answers it wrote per second of writing.

Run:  python bench/ray_scaling.py            (about 20 minutes on 2 cores, most of it training)
Last line: ``workers 1: X s; workers 2: Y s; speedup Z``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TRAITWATCH_PROGRESS", "0")


def spec(out: Path, args: argparse.Namespace, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "name": "ray-bench",
        "output_dir": str(out),
        "model": {"source": "embedded"},
        "datasets": [{"domain": "arithmetic", "demo": {"n_examples": 400, "marker_fraction": {"normal": 0.0, "mild": 0.2, "strong": 0.3}}}],
        "levels": ["normal", "mild", "strong"],
        "seeds": [0],
        "lora": {"r": 8, "alpha": 16},
        "training": {
            "learning_rate": 1e-3,
            "warmup_steps": 2,
            "batch_size": 8,
            "max_steps": args.steps,
            "save_every": 1,
            "max_length": 64,
            "heldout_fraction": 0.1,
            "heldout_max": 32,
        },
        "traits": ["builtin:arithmetic"],
        "generation": {"samples_per_question": 1, "temperature": 0, "max_new_tokens": 20, "batch_size": 64, "adapters_per_batch": 16},
        "judges": [{"name": "check", "kind": "check"}],
    }
    s.update(over)
    return s


def answers(store: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(store)) as db:
        return sorted(db.execute("SELECT gen_key, answer FROM generations").fetchall())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (the demo: 30)")
    ap.add_argument("--block", type=int, default=8, help="checkpoints per generation task")
    ap.add_argument("--keep", type=Path, default=None, help="keep the trained study here (and reuse it when present)")
    args = ap.parse_args()
    from traitwatch import Study

    tmp = Path(tempfile.mkdtemp(prefix="tw-ray-bench-"))
    root = args.keep or tmp
    try:
        out = root / "out"
        trained = root / "train.yaml"
        trained.parent.mkdir(parents=True, exist_ok=True)
        trained.write_text(yaml.safe_dump(spec(out, args), sort_keys=False))
        t = time.perf_counter()
        Study.load(trained).run(stages=["train"])
        took = time.perf_counter() - t
        print(f"trained 3 runs x {args.steps} steps (local executor, not part of the comparison): {took:.0f} s", flush=True)
        times: dict[int, float] = {}
        stores: dict[int, Path] = {}
        for workers in (1, 2):
            stores[workers] = tmp / f"workers{workers}.sqlite"
            shutil.copy(out / "study.sqlite", stores[workers])
            with closing(sqlite3.connect(stores[workers])) as db, db:
                db.execute("DELETE FROM generations")
                db.execute("DELETE FROM scores")
                db.execute("DELETE FROM judgments")
            executor = {"kind": "ray", "workers": workers, "num_cpus": 1, "block": args.block}
            path = tmp / f"workers{workers}.yaml"
            path.write_text(yaml.safe_dump(spec(out, args, executor=executor, store=str(stores[workers])), sort_keys=False))
            t = time.perf_counter()
            results = Study.load(path).run(stages=["generate", "judge"])
            times[workers] = time.perf_counter() - t
            gen = next(r for r in results if r.name == "generate").counts
            print(
                f"workers {workers}: {times[workers]:.1f} s for {gen['generated']} answers "
                f"({gen['generated'] / times[workers]:.2f} answers/s); driver commit rate {gen.get('driver_rows_per_s')} rows/s",
                flush=True,
            )
        same = answers(stores[1]) == answers(stores[2])
        print(f"same answers with 1 and 2 workers: {same}", flush=True)
        print(f"workers 1: {times[1]:.0f} s; workers 2: {times[2]:.0f} s; speedup {times[1] / times[2]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
