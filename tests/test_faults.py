"""Fault injection: kill -9 a real `traitwatch run` during every stage, restart it, and
compare the final store with an uninterrupted run's.

The study is deterministic on purpose (tiny fp32 model, greedy decoding) so that "the same
results" can be checked row by row. The paid judge is the test's OpenAI-compatible server,
which counts every request it receives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_server import FakeOpenAI

TOP = [("10", -0.7), ("90", -1.2), ("50", -2.0)]


def _spec(tiny_study_dict: Callable[..., dict[str, Any]], out: Path, base_url: str) -> dict[str, Any]:
    return tiny_study_dict(
        out,
        levels=["normal", "strong"],
        generation={"samples_per_question": 1, "temperature": 0, "max_new_tokens": 6, "batch_size": 4, "adapters_per_batch": 2},
        judges=[
            {"name": "check", "kind": "check"},
            {
                "name": "api",
                "kind": "openai",
                "model": "judge-test",
                "base_url": base_url,
                "api_key_env": None,
                "max_concurrency": 1,
                "traits": ["wrong_answer", "contempt"],
            },
            {"name": "llm", "kind": "local", "local": {"source": "base"}, "traits": ["wrong_answer"], "min_mass": 0.0, "batch_size": 2},
        ],
    )


def _start(study: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TRAITWATCH_PROGRESS="0", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "traitwatch.cli", "run", str(study)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _run_to_end(study: Path) -> str:
    p = _start(study)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def _kill_during(study: Path, marker: str, rng: random.Random) -> bool:
    """Start the study, wait until a line containing ``marker`` appears, wait a random
    moment, kill -9. Returns False when the run finished before the marker (nothing left)."""
    p = _start(study)
    assert p.stdout is not None
    for line in p.stdout:
        if marker in line:
            time.sleep(rng.uniform(0.0, 0.4))
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            return True
    p.wait(30)
    return False


def _snapshot(db: Path) -> dict[str, object]:
    with sqlite3.connect(db) as c:
        return {
            "runs": sorted(c.execute("SELECT run_id, fingerprint, status, total_steps FROM runs").fetchall()),
            "checkpoints": sorted(c.execute("SELECT run_id, step, adapter_sha FROM checkpoints").fetchall()),
            "generations": sorted(
                c.execute("SELECT gen_key, run_id, step, question_id, sample, answer, n_tokens, finish FROM generations").fetchall()
            ),
            "probes": {k: json.loads(p) for k, p in c.execute("SELECT gen_key, probes FROM generations")},
            "judgments": {
                k: (j, t, m, s) for k, j, t, m, s in c.execute("SELECT judgment_key, judge, trait, method, score FROM judgments")
            },
            "scores": sorted(c.execute("SELECT gen_key, judge, trait, judgment_key FROM scores").fetchall()),
        }


@pytest.mark.slow  # about 70 s on 2 cores: two full studies, one of them killed and restarted seven times
@pytest.mark.timeout(900)
def test_kill_9_anywhere_then_rerun_gives_the_uninterrupted_result(tmp_path: Path, tiny_study_dict: Callable[..., dict[str, Any]]) -> None:
    rng = random.Random(int(os.environ.get("TW_FAULT_SEED", "7")))
    with FakeOpenAI(TOP) as srv:  # one server: the judge's identity (its URL) is the same in both runs
        ref = tmp_path / "ref.yaml"
        ref.write_text(yaml.safe_dump(_spec(tiny_study_dict, tmp_path / "ref", srv.base_url)))
        _run_to_end(ref)
        ref_requests = len(srv.requests)
        srv.requests.clear()

        faulty = tmp_path / "faulty.yaml"
        faulty.write_text(yaml.safe_dump(_spec(tiny_study_dict, tmp_path / "faulty", srv.base_url)))
        kills = []
        for marker in ["train (steps)", "  arith-normal-s0", "generate:", "judge check", "judge api", "judge llm", "analyze "]:
            if _kill_during(faulty, marker, rng):
                kills.append(marker)
        assert len(kills) >= 5, kills
        _run_to_end(faulty)
        assert (tmp_path / "faulty" / "report" / "report.html").exists()

        a, b = _snapshot(tmp_path / "ref" / "study.sqlite"), _snapshot(tmp_path / "faulty" / "study.sqlite")
        for table in ("runs", "checkpoints", "generations", "scores"):
            assert a[table] == b[table], table
        assert a["judgments"].keys() == b["judgments"].keys()
        for k, (judge, trait, method, score) in a["judgments"].items():
            j2 = b["judgments"][k]
            assert j2[:3] == (judge, trait, method)
            assert (score is None and j2[3] is None) or j2[3] == pytest.approx(score, abs=1e-3)
        for k, probes in a["probes"].items():
            assert b["probes"][k] == pytest.approx(probes, abs=1e-4)
        # no half-written checkpoint survives, and no paid request is repeated once answered
        assert not list((tmp_path / "faulty").rglob("*.tmp"))
        prompts = Counter(r["messages"][0]["content"] for r in srv.requests)
        repeated = sum(n - 1 for n in prompts.values())
        assert len(prompts) == ref_requests
        assert repeated <= 1, f"at most the one request in flight at the kill may be sent again, got {repeated}"
