"""Drive headless Debian Chromium over the DevTools protocol on a pipe (no websocket library).

Used by bench/report_scale.py (time until the report is usable) and tests/test_report_browser.py
(console errors, selectors, plotly's drawn data). Why a pipe: ``--remote-debugging-pipe`` makes
Chromium read protocol messages (JSON, each ended by a NUL byte) on fd 3 and write them on fd 4,
so nothing listens on a port and the standard library suffices.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

#: Headless Chromium with no network services (this machine's closed network refuses them);
#: the tests' --dump-dom runs use these too (tests/test_e2e.py).
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: For a DevTools session: HEADLESS plus a quiet profile and a fixed window size.
FLAGS = [
    *HEADLESS,
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--window-size=1280,1000",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Debian chromium is required: apt-get install chromium (make test installs it)")
    return path


class Page:
    """One Chromium process with one page, driven over the protocol pipe.

    ``events`` collects every event the page sent (console calls, exceptions, log entries such
    as CSP violations), so a caller can check there were no errors.
    """

    def __init__(self, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child, before exec: the protocol's fixed fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]  # never clobber one with the other
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,  # noqa: PLW1509 - places fds 3 and 4; callers are single-threaded
            close_fds=False,  # fds 3 and 4 must survive exec (the pipes' own fds are close-on-exec)
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the protocol pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)  # type: ignore[no-any-return]

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False, timeout: float = 60) -> dict[str, Any]:
        """Send one command and wait for its result (events arriving meanwhile are kept)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page exception: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, *, ready: str, timeout: float = 60) -> float:
        """Navigate and wait until ``ready`` (a JS expression) is truthy; returns the wall seconds
        from sending the navigation to seeing it (polled every 10 ms)."""
        t0 = time.perf_counter()
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while not self.evaluate(ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page at {url} did not become ready ({ready})")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations among them)."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"{d.get('text', '')} {d.get('exception', {}).get('description', '')}".strip()[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot(html: Path, png: Path, profile: Path, *, fragment: str = "", height: int = 2400, budget_ms: int = 5000) -> Path:
    """A full-window PNG of the page as headless Chromium draws it (``--screenshot``)."""
    subprocess.run(
        [
            chromium_path(),
            *[f for f in FLAGS if not f.startswith("--window-size")],
            f"--window-size=1280,{height}",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={png}",
            html.as_uri() + fragment,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return png
