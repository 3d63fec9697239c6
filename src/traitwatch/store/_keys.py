"""Content-addressed keys: a key changes whenever anything that shaped the result changes.

Why: resuming by "does a row exist for (run, step, question)" silently reuses stale results
after a prompt or setting changes. Every stored result is keyed by a hash of all of its
inputs (weights identity, prompt text, settings, rubric), so changed inputs mean new work
and identical inputs are never computed (or paid for) twice.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(*parts: Any) -> str:
    """SHA-256 (hex, 32 chars) of the canonical JSON of ``parts``."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
