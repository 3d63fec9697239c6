"""Chat datasets in JSONL: one ``{"messages": [{"role", "content"}, ...]}`` object per line.

Why: fine-tuning data comes from many hands; a bad line found after an hour of training
wastes the hour. We read the whole file up front, check every line, and report each bad one
by file:line with what is wrong, so the user fixes all of them in one pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from traitwatch.errors import DataError

ROLES = ("system", "user", "assistant")
#: A line longer than this is almost surely not a chat example (a pasted file, a binary blob).
MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ChatExample:
    """One conversation; ``line`` is where it came from, for error messages."""

    messages: tuple[Message, ...]
    line: int = 0

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass(frozen=True)
class ChatDataset:
    path: Path
    examples: tuple[ChatExample, ...]
    sha256: str

    def __len__(self) -> int:
        return len(self.examples)


def _check_example(obj: object) -> tuple[tuple[Message, ...] | None, str | None]:
    """Validate one parsed line. Returns (messages, None) or (None, what is wrong)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if "messages" not in obj:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        return None, f"no 'messages' key (keys: {keys})"
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        return None, "'messages' must be a non-empty list"
    out: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"messages[{i}] is not an object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return None, f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return None, f"messages[{i}].content must be a string, got {type(content).__name__}"
        if role == "system" and i != 0:
            return None, f"messages[{i}] is a system message; only the first message may be one"
        out.append(Message(role, content))
    if not any(m.role == "assistant" for m in out):
        return None, "no assistant turn (nothing to train on)"
    if not any(m.content.strip() for m in out if m.role == "assistant"):
        return None, "every assistant turn is empty"
    return tuple(out), None


def load_chat_jsonl(path: str | Path, *, limit: int | None = None) -> ChatDataset:
    """Read and validate a chat JSONL file.

    Blank lines are skipped. Every bad line is collected; the error names the first one and
    lists the line numbers of the others (up to 20).

    Raises:
        DataError: the file is missing, empty, not UTF-8, or has bad lines.
    """
    path = Path(path)
    fix = 'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("dataset file not found", where=str(path), fix="check the path in the study's datasets") from None
    except IsADirectoryError:
        raise DataError("is a folder, not a JSONL file", where=str(path), fix="point at the .jsonl file") from None
    examples: list[ChatExample] = []
    bad: list[tuple[int, str]] = []
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        if len(line_bytes) > MAX_LINE_BYTES:
            bad.append((lineno, f"line is {len(line_bytes) / 2**20:.1f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit"))
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((lineno, f"not UTF-8 (bad byte 0x{line_bytes[exc.start]:02x} at column {exc.start + 1})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((lineno, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        msgs, problem = _check_example(obj)
        if problem is not None:
            bad.append((lineno, problem))
            continue
        assert msgs is not None
        examples.append(ChatExample(msgs, lineno))
        if limit is not None and len(examples) >= limit:
            break
    if bad:
        line, problem = bad[0]
        others = [str(n) for n, _ in bad[1:21]]
        more = f" (also bad: line{'s' if len(others) > 1 else ''} {', '.join(others)}{' ...' if len(bad) > 21 else ''})" if others else ""
        raise DataError(f"{problem}{more}", where=f"{path}:{line}", fix=fix)
    if not examples:
        raise DataError("dataset has no examples", where=str(path), fix=fix)
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex.as_dicts(), sort_keys=True, ensure_ascii=False).encode())
    return ChatDataset(path, tuple(examples), digest.hexdigest())


def write_chat_jsonl(path: str | Path, conversations: list[list[dict[str, str]]]) -> Path:
    """Write conversations as chat JSONL (atomically: a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
