"""A small HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire format.

It stands in for the paid API (which tests cannot reach) and does what a real server will
not do on demand: errors, 429 with Retry-After, malformed bodies, slow replies. Each
request takes the next scripted behaviour; when the script is empty it answers normally
with ``top_logprobs`` built from ``default_top``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    status: int = 200
    body: Any = None  # dict -> JSON, str -> raw text, None -> a normal completion
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    top: list[tuple[str, float]] | None = None


def completion(top: list[tuple[str, float]], prompt_tokens: int = 120) -> dict[str, Any]:
    token = max(top, key=lambda t: t[1])[0] if top else "0"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "judge-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": token},
                "finish_reason": "length",
                "logprobs": {
                    "content": [
                        {
                            "token": token,
                            "logprob": top[0][1] if top else 0.0,
                            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
                        }
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


class FakeOpenAI:
    def __init__(self, default_top: list[tuple[str, float]], responder: Any = None) -> None:
        """``responder(body) -> top`` (optional) chooses the top log-probabilities per request."""
        self.default_top = default_top
        self.responder = responder
        self.script: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if len(raw) < length:
                    # the client died between its headers and the end of its body (a test kills
                    # it at random moments): a real server drops such a request unanswered
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                with outer.lock:
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("Authorization"))
                    outer.times.append(time.time())
                    step = outer.script.popleft() if outer.script else Scripted()
                if step.delay_s:
                    time.sleep(step.delay_s)
                if not self.path.endswith("/chat/completions"):
                    step = Scripted(status=404, body={"error": {"message": "not found"}})
                top = step.top or (outer.responder(body) if outer.responder else outer.default_top)
                payload = step.body if step.body is not None else completion(top)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(step.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in step.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll: shutdown() waits for the serve loop's next poll (0.5 s by default, on every test)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
