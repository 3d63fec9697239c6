"""`traitwatch watch` and `traitwatch import`: runs trained outside traitwatch.

The adapters are real peft files in the real Hugging Face layout: ``checkpoint-N/`` written by
peft's ``save_pretrained`` (random LoRA weights of the tiny model, larger at each step, so the
answers drift from the base model's), or by a TRL ``SFTTrainer`` for the import test. The live
judge is the OpenAI-compatible test server, which counts every request; it scores an answer
low when it is one of the first answers it sees (the step-0 answers) and high when it is new,
so a drift from the base model is a rise of the trait and the alarm fires at a known place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from openai_server import FakeOpenAI, Scripted
from traitwatch.cli import app
from traitwatch.pipeline._layout import (
    FoundCheckpoint,
    find_checkpoints,
    incomplete_reason,
    run_design,
    safetensors_complete,
    training_finished,
)
from traitwatch.pipeline._watcher import WATCH_LOCK
from traitwatch.store import Store, StudyLock
from traitwatch.train._checkpoints import file_sha256

runner = CliRunner()
LOW = [("10", -0.01), ("90", -5.0)]
HIGH = [("90", -0.01), ("10", -5.0)]
PROBES = 4  # probe questions per checkpoint: the step-0 prompts the judge scores low


class DriftJudge:
    """The judge server's scores: the first ``n_low`` distinct prompts low, every later new one
    high, a prompt seen before as before (so every run of a test gets the same scores)."""

    def __init__(self, n_low: int) -> None:
        self.n_low = n_low
        self.memo: dict[str, list[tuple[str, float]]] = {}
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> list[tuple[str, float]]:
        content = body["messages"][0]["content"]
        with self.lock:
            if content not in self.memo:
                self.memo[content] = LOW if len(self.memo) < self.n_low else HIGH
            return self.memo[content]


def make_adapters(folder: Path, steps: list[int], max_steps: int) -> None:
    """``checkpoint-N`` folders as a Trainer leaves them: peft's adapter files and trainer_state.json."""
    import torch
    from peft import LoraConfig, get_peft_model

    from traitwatch.config import ModelSpec, RandomModelSpec
    from traitwatch.models import load_model

    model = load_model(ModelSpec(source="random", dtype="float32", device="cpu", random=RandomModelSpec(seed=0))).model
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    for k in steps:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.4 * k)
        out = folder / f"checkpoint-{k}"
        peft_model.save_pretrained(str(out))
        history = [{"loss": 2.0 / (s + 1), "learning_rate": 1e-3, "step": s} for s in range(1, k + 1)]
        (out / "trainer_state.json").write_text(json.dumps({"global_step": k, "max_steps": max_steps, "log_history": history}))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint-0 .. checkpoint-7 of a run with max_steps 7, ready to be copied in over time."""
    folder = tmp_path_factory.mktemp("staged")
    make_adapters(folder, list(range(8)), max_steps=7)
    return folder


def _spec(tiny_study_dict: Callable[..., dict[str, Any]], out: Path, base_url: str, actions: list[str]) -> dict[str, Any]:
    return tiny_study_dict(
        out,
        datasets=[],
        generation={"samples_per_question": 1, "temperature": 0, "max_new_tokens": 6, "batch_size": 8, "adapters_per_batch": 2},
        judges=[
            {
                "name": "api",
                "kind": "openai",
                "model": "judge-test",
                "base_url": base_url,
                "api_key_env": None,
                "max_concurrency": 1,
                "traits": ["wrong_answer"],
            }
        ],
        monitor={
            "probes": {"questions": PROBES},
            "alarms": [{"trait": "wrong_answer", "min_rise": 10, "detector": {"name": "threshold", "params": {"delta": 5, "persist": 1}}}],
            "actions": actions,
        },
    )


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# -- layouts --------------------------------------------------------------------------------------
def test_a_checkpoint_is_complete_only_when_every_file_is_whole(staged: Path, tmp_path: Path) -> None:
    src = staged / "checkpoint-2"
    ck = FoundCheckpoint(2, tmp_path / "checkpoint-2", "hf")
    ck.path.mkdir()
    assert incomplete_reason(ck) == "no adapter_model.safetensors yet"
    data = (src / "adapter_model.safetensors").read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        (ck.path / "adapter_model.safetensors").write_bytes(data[:cut])
        assert not safetensors_complete(ck.path / "adapter_model.safetensors"), cut
        assert "still being written" in str(incomplete_reason(ck))
    (ck.path / "adapter_model.safetensors").write_bytes(data)
    assert "adapter_config.json" in str(incomplete_reason(ck))
    (ck.path / "adapter_config.json").write_text((src / "adapter_config.json").read_text()[:30])
    assert "adapter_config.json" in str(incomplete_reason(ck))
    shutil.copy(src / "adapter_config.json", ck.path)
    assert incomplete_reason(ck) is None
    (tmp_path / "checkpoint-9.tmp").mkdir()
    (tmp_path / "step_000004").mkdir()
    (tmp_path / "notes").mkdir()
    assert [(c.step, c.layout) for c in find_checkpoints(tmp_path)] == [(2, "hf"), (4, "traitwatch")]
    assert not training_finished(ck)  # its trainer_state.json is not there
    shutil.copy(src / "trainer_state.json", ck.path)
    assert not training_finished(ck)
    assert training_finished(FoundCheckpoint(7, staged / "checkpoint-7", "hf"))


def test_runs_are_filed_by_their_id_or_the_options(tiny_study_dict: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    from traitwatch.config import load_study

    spec = load_study(_write(tmp_path / "s.yaml", tiny_study_dict(tmp_path / "out", datasets=[], levels=["mild"])))
    assert run_design(spec, "math-strong-s3", None, None, None) == ("math", "strong", 3)
    assert run_design(spec, "trl-out", None, None, None) == ("external", "mild", 0)
    assert run_design(spec, "math-strong-s3", "med", "normal", 1) == ("med", "normal", 1)


# -- watch --once ---------------------------------------------------------------------------------
def test_watch_once_evaluates_what_is_there_and_requests_a_stop(
    staged: Path, tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    run_dir = tmp_path / "trainer-out"
    run_dir.mkdir()
    for k in (0, 1, 2):
        shutil.copytree(staged / f"checkpoint-{k}", run_dir / f"checkpoint-{k}")
    (run_dir / "checkpoint-3.tmp").mkdir()  # a half-written save with a temporary name: never read
    with FakeOpenAI(LOW, responder=DriftJudge(PROBES)) as srv:
        study = _write(tmp_path / "monitor.yaml", _spec(tiny_study_dict, tmp_path / "study", srv.base_url, ["log", "file", "stop"]))
        args = ["watch", str(run_dir), "--study", str(study), "--once", "--poll", "0.2"]
        res = runner.invoke(app, [*args, "--run-id", "my-run"])  # later calls find the run by its folder
        assert res.exit_code == 0, res.output
        lines = [x for x in res.output.splitlines() if "probe mean" in x]
        assert [x.split()[0] for x in lines] == ["checkpoint-0", "checkpoint-1", "checkpoint-2"], res.output
        assert "evaluated what is there (--once)" in res.output
        outputs = [res.output]
        sent = len(srv.requests)
        assert PROBES <= sent <= 3 * PROBES  # one request per distinct answer

        # the same again: everything is stored, nothing is asked
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "run my-run: 3 checkpoints already stored" in res.output and len(srv.requests) == sent
        outputs.append(res.output)

        # more checkpoints: the answers drift further, the alarm fires (once), the watcher asks the trainer to stop
        for k in (3, 4, 5):
            shutil.copytree(staged / f"checkpoint-{k}", run_dir / f"checkpoint-{k}")
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        outputs.append(res.output)
        assert sum("stop requested: wrote" in o and "does not own the trainer" in o for o in outputs) == 1, outputs
    stop = json.loads((run_dir / "STOP").read_text())
    with Store(tmp_path / "study" / "study.sqlite", readonly=True) as store:
        [alarm] = store.alarms()
        [run] = store.runs()
        steps = [c.step for c in store.checkpoints("my-run")]
        gens = store.generations()
    assert stop["step"] == alarm["step"] and stop["trait"] == "wrong_answer"
    assert run["run_id"] == "my-run" and run["info"]["source"] == "watch" and run["total_steps"] == 7
    assert steps == [0, 1, 2, 3, 4, 5]
    assert len(gens) == 6 * PROBES
    assert (tmp_path / "study" / "alarms.jsonl").read_text().count("\n") == 1
    assert (run_dir / WATCH_LOCK).exists()


def test_a_second_watcher_of_the_same_folder_is_refused(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    run_dir = tmp_path / "trainer-out"
    run_dir.mkdir()
    study = _write(tmp_path / "monitor.yaml", _spec(tiny_study_dict, tmp_path / "study", "http://127.0.0.1:9/v1", ["log"]))
    with StudyLock(run_dir, name=WATCH_LOCK, what="this checkpoint folder"):
        res = runner.invoke(app, ["watch", str(run_dir), "--study", str(study), "--once"])
    assert res.exit_code == 2
    assert "this checkpoint folder is in use by pid" in res.output


def test_watch_needs_a_monitor_section(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    study = _write(tmp_path / "s.yaml", tiny_study_dict(tmp_path / "out", datasets=[]))
    (tmp_path / "run").mkdir()
    res = runner.invoke(app, ["watch", str(tmp_path / "run"), "--study", str(study), "--once"])
    assert res.exit_code == 2 and "monitor" in res.output


# -- kill -9 anywhere -------------------------------------------------------------------------------
WRITER = r"""
import shutil, sys, time
from pathlib import Path
src, dst, gap, late, go = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dst.mkdir(parents=True, exist_ok=True)
for ck in sorted(src.iterdir(), key=lambda p: int(p.name.split("-")[1])):
    out = dst / ck.name
    if int(ck.name.split("-")[1]) == late:  # written in stages: config, half the adapter, the rest
        while go != "-" and not Path(go).exists():  # the test says when the watcher is idle
            time.sleep(0.05)
        out.mkdir()
        shutil.copy(ck / "adapter_config.json", out)
        time.sleep(gap)
        data = (ck / "adapter_model.safetensors").read_bytes()
        with open(out / "adapter_model.safetensors", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(2 * gap)
            fh.write(data[len(data) // 2 :])
        shutil.copy(ck / "trainer_state.json", out)
    else:
        shutil.copytree(ck, out)
    print("wrote", ck.name, flush=True)
    time.sleep(gap)
"""


def _writer(staged: Path, run_dir: Path, gap: float, late: int, go: Path | None = None) -> subprocess.Popen[str]:
    """The trainer: copies checkpoint-N in, ``gap`` seconds apart; checkpoint-``late`` in stages
    (after the file ``go`` appears, when given)."""
    args = [str(staged), str(run_dir), str(gap), str(late), str(go or "-")]
    return subprocess.Popen([sys.executable, "-c", WRITER, *args], text=True, stdout=subprocess.DEVNULL)


def _watcher(study: Path, run_dir: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TRAITWATCH_PROGRESS="0", PYTHONUNBUFFERED="1", COLUMNS="250")
    cmd = [sys.executable, "-m", "traitwatch.cli", "watch", str(run_dir), "--study", str(study), "--poll", "0.2", "--idle-timeout", "120"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _kill_after(p: subprocess.Popen[str], marker: str, delay: float) -> tuple[bool, str]:
    """Read the watcher's output until ``marker``; then wait ``delay`` and kill -9 it.
    Returns (killed, output); not killed when it exited first."""
    assert p.stdout is not None
    seen = []
    for line in p.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)
                return True, "".join(seen)
    p.wait(30)
    return False, "".join(seen)


def _snapshot(db: Path) -> dict[str, Any]:
    with closing(sqlite3.connect(db)) as c:
        return {
            "runs": sorted(c.execute("SELECT run_id, fingerprint, status, total_steps, info FROM runs").fetchall()),
            "checkpoints": sorted(c.execute("SELECT run_id, step, path, adapter_sha, train_loss FROM checkpoints").fetchall()),
            "generations": sorted(
                c.execute("SELECT gen_key, run_id, step, question_id, sample, answer, n_tokens, finish FROM generations")
            ),
            "judgments": sorted(c.execute("SELECT judgment_key, judge, trait, method, round(score, 6) FROM judgments").fetchall()),
            "scores": sorted(c.execute("SELECT gen_key, judge, trait, judgment_key FROM scores").fetchall()),
            "alarms": sorted(c.execute("SELECT run_id, step, judge, trait, detector, message, info FROM alarms").fetchall()),
            "stop": c.execute("SELECT key FROM meta WHERE key LIKE 'watch-stop:%'").fetchall(),
        }


@pytest.mark.slow  # about 70 s on 2 cores: a watched run, then the same run with the watcher killed and restarted
@pytest.mark.timeout(600)
def test_kill_9_the_watcher_anywhere_then_restart_gives_the_uninterrupted_result(
    staged: Path, tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]
) -> None:
    rng = random.Random(int(os.environ.get("TW_FAULT_SEED", "11")))
    run_dir = tmp_path / "trainer-out"  # the same folder both times: the run's fingerprint names it
    late, gap = 4, 1.2
    with FakeOpenAI(LOW, responder=DriftJudge(PROBES)) as srv:
        srv.script.extend(Scripted(delay_s=0.05) for _ in range(10_000))  # slow replies: kills land mid-request too
        actions = ["log", "file", "stop"]
        ref = _write(tmp_path / "ref.yaml", _spec(tiny_study_dict, tmp_path / "ref", srv.base_url, actions))
        faulty = _write(tmp_path / "faulty.yaml", _spec(tiny_study_dict, tmp_path / "faulty", srv.base_url, actions))

        # the reference: one watcher from before the first checkpoint to the end of training
        w = _watcher(ref, run_dir)
        assert w.stdout is not None
        go = tmp_path / "go"
        lines: list[str] = []
        for line in w.stdout:
            lines.append(line)
            if "watching" in line:
                writer = _writer(staged, run_dir, gap, late, go)
            if line.startswith(f"checkpoint-{late - 1} ") and "probe mean" in line:
                go.touch()  # the watcher is idle now: it will see checkpoint-{late} being written
        w.wait(30)
        writer.wait(60)
        out = "".join(lines)
        assert w.returncode == 0, out
        # it saw the checkpoint without its adapter, then half-written, and waited each time
        assert f"checkpoint-{late}: waiting (no adapter_model.safetensors yet)" in out, out
        assert f"checkpoint-{late}: waiting (adapter_model.safetensors is still being written" in out, out
        assert "training finished: checkpoint-7 is its last checkpoint" in out
        assert out.count("probe mean") == 8 and "stop requested" in out
        ref_prompts = Counter(r["messages"][0]["content"] for r in srv.requests)
        assert max(ref_prompts.values()) == 1
        ref_stop = json.loads((run_dir / "STOP").read_text())
        srv.requests.clear()

        # the same training again, the watcher killed at random moments and restarted
        shutil.rmtree(run_dir)
        writer = _writer(staged, run_dir, gap, late)
        kills, outputs = [], []
        for attempt in range(6):
            p = _watcher(faulty, run_dir)
            marker, delay = ("watching", rng.uniform(0.0, 3.0)) if attempt % 3 == 0 else ("probe mean", rng.uniform(0.0, 1.0))
            killed, text = _kill_after(p, marker, delay)
            outputs.append(text)
            if not killed:
                assert p.returncode == 0, text
                break
            kills.append(f"{marker}+{delay:.2f}s")
        else:
            p = _watcher(faulty, run_dir)
            text, _ = p.communicate(timeout=300)
            outputs.append(text)
            assert p.returncode == 0, text
        writer.wait(60)
        assert len(kills) >= 3, (kills, outputs)
        assert "training finished" in outputs[-1], outputs[-1]
        prompts = Counter(r["messages"][0]["content"] for r in srv.requests)

    a, b = _snapshot(tmp_path / "ref" / "study.sqlite"), _snapshot(tmp_path / "faulty" / "study.sqlite")
    for table in ("runs", "checkpoints", "generations", "judgments", "scores", "alarms", "stop"):
        assert a[table] == b[table], table
    assert len(a["checkpoints"]) == 8 and len(a["generations"]) == 8 * PROBES and len(a["alarms"]) == 1
    staged_sha = {int(p.name.split("-")[1]): file_sha256(p / "adapter_model.safetensors") for p in staged.iterdir()}
    assert {row[1]: row[3] for row in b["checkpoints"]} == staged_sha, "every adapter was read whole"
    assert json.loads((run_dir / "STOP").read_text()) == ref_stop
    # every answer judged once; a request is sent again only when a kill caught it in flight
    assert set(prompts) == set(ref_prompts)
    repeated = sum(n - 1 for n in prompts.values())
    assert repeated <= len(kills), (repeated, kills)
    print(f"kills: {kills}; judge requests {sum(prompts.values())} for {len(ref_prompts)} answers (repeated: {repeated})")


# -- a run of the study itself ----------------------------------------------------------------------
def test_watching_or_importing_a_run_of_the_study_reuses_its_answers(tiny_study_copy: Any) -> None:
    spec = yaml.safe_load(tiny_study_copy.yaml.read_text())
    spec["monitor"] = {"probes": {"questions": 4}, "alarms": [{"trait": "wrong_answer", "judge": "check"}]}
    study = _write(tiny_study_copy.yaml, spec)
    db = tiny_study_copy.out / "study.sqlite"

    def counts() -> tuple[int, ...]:
        with closing(sqlite3.connect(db)) as c:
            return tuple(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "checkpoints", "generations", "judgments"))

    before = counts()
    run_dir = tiny_study_copy.out / "runs" / "arith-strong-s0"  # the run folder; its checkpoints/ is what is watched
    res = runner.invoke(app, ["watch", str(run_dir), "--study", str(study), "--once", "--poll", "0.2"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "run arith-strong-s0: 4 checkpoints already stored (last step 6)" in res.output
    assert "training finished: step_000006 is its last checkpoint" in res.output
    assert counts() == before, "the study's own answers and judgments are the probe answers: nothing new"
    assert (run_dir / "checkpoints" / WATCH_LOCK).exists()

    res = runner.invoke(app, ["import", str(tiny_study_copy.out / "runs"), "--study", str(study)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert res.output.count("already a run of this study") == 2
    assert counts() == before
