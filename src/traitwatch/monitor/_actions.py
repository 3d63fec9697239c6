"""What an alarm does: print it, append it to a file, post it to a webhook, ask for a stop.

Why each is failure-tolerant except the stop: an alarm must never be lost because a webhook
is down, so the store and the alarm file are written first and a failed POST is only
reported. A stop is a request, written as a file beside the checkpoints, so a process that
does not own the training (``traitwatch watch``) can ask a training run to stop, and the
callback inside the run (ours or the Hugging Face one) polls for it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from traitwatch.config import MonitorSpec
from traitwatch.progress import console

from ._policy import Alarm

#: Written into a run's checkpoint folder to ask the training process to stop.
STOP_REQUEST = "STOP"


def act(alarm: Alarm, spec: MonitorSpec) -> list[str]:
    """Carry out the spec's actions except ``stop`` (the caller owns the run); returns problems."""
    problems: list[str] = []
    if "log" in spec.actions:
        console.print(f"[bold red]ALARM[/bold red] {_escape(alarm.message)}", soft_wrap=True)
    if "file" in spec.actions and spec.alarm_file is not None:
        try:
            spec.alarm_file.parent.mkdir(parents=True, exist_ok=True)
            with spec.alarm_file.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(alarm.to_dict() | {"time": time.time()}) + "\n")
        except OSError as exc:
            problems.append(f"alarm file {spec.alarm_file}: {exc.strerror}")
    if "webhook" in spec.actions and spec.webhook_url:
        problems += _post(spec.webhook_url, alarm.to_dict(), spec.webhook_timeout_s)
    for p in problems:
        console.print(f"[yellow]warning:[/yellow] alarm stored, but {_escape(p)}", soft_wrap=True)
    return problems


def _post(url: str, payload: dict[str, Any], timeout: float) -> list[str]:
    import httpx

    try:
        r = httpx.post(url, json={"source": "traitwatch", "alarm": payload}, timeout=timeout)
        if r.status_code >= 400:
            return [f"webhook answered HTTP {r.status_code}"]
    except httpx.HTTPError as exc:
        return [f"webhook failed: {type(exc).__name__}"]
    return []


def request_stop(checkpoint_dir: Path, alarm: Alarm) -> Path:
    """Ask the process training this run to stop (it polls for the file)."""
    path = Path(checkpoint_dir) / STOP_REQUEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(alarm.to_dict()), encoding="utf-8")
    return path


def stop_requested(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The stop request left for this run, if any."""
    path = Path(checkpoint_dir) / STOP_REQUEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _escape(text: str) -> str:
    return text.replace("[", "\\[")
