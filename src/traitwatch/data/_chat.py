"""Chat datasets in JSONL: one ``{"messages": [{"role", "content"}, ...]}`` or
``{"prompt": ..., "completion": ...}`` object per line; and the row checks every source shares.

Why: fine-tuning data comes from many hands; a bad line found after an hour of training
wastes the hour. We read the whole file up front, check every line, and report each bad one
by file:line with what is wrong, so the user fixes all of them in one pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
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
    """One conversation; ``line`` is where it came from, for error messages: the line of a
    JSONL file, the row (from 1) of a table."""

    messages: tuple[Message, ...]
    line: int = 0

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass(frozen=True)
class ChatDataset:
    """A validated dataset; ``path`` is its file or folder, or ``hub:<id>`` for a hub dataset."""

    path: Path | str
    examples: tuple[ChatExample, ...]
    sha256: str

    def __len__(self) -> int:
        return len(self.examples)


CHAT_FIX = 'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
PROMPT_FIX = 'each line must be {"prompt": "...", "completion": "..."} (or map your fields with columns:, docs/data.md)'
EITHER_FIX = (
    'each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]} '
    'or {"prompt": "...", "completion": "..."}; other field names: map them with columns: (docs/data.md)'
)


def detect_columns(keys: Iterable[str], columns: Mapping[str, str] | None) -> dict[str, str] | None:
    """The column mapping to use: ``columns`` when given, else ``messages`` when there is such a
    field, else ``prompt`` and ``completion`` when both are there; None when neither is."""
    if columns:
        return dict(columns)
    keys = set(keys)
    if "messages" in keys:
        return {"messages": "messages"}
    if {"prompt", "completion"} <= keys:
        return {"prompt": "prompt", "completion": "completion"}
    return None


def fix_for(columns: Mapping[str, str] | None, *, mapped: bool = False) -> str:
    """What a bad line's ``Fix:`` says, for the format being read (``mapped``: the columns are
    the spec's ``columns:``, so the fix names them)."""
    if not columns:
        return EITHER_FIX
    if mapped:
        names = " and ".join(f"'{c}' ({r})" for r, c in columns.items())
        return f"each line needs {names}, as the source's columns: says; or change columns: (docs/data.md)"
    return CHAT_FIX if "messages" in columns else PROMPT_FIX


def _turns(value: object, name: str, role: str) -> tuple[list[object] | None, str | None]:
    """A prompt or completion field: a string is one ``role`` turn, a list is messages as they are."""
    if isinstance(value, str):
        return [{"role": role, "content": value}], None
    if isinstance(value, list) and value:
        return list(value), None
    if value is None:
        return None, f"'{name}' is empty (null)"
    return None, f"'{name}' must be a string or a non-empty list of messages, got {type(value).__name__}"


def _line_fix(obj: object, columns: Mapping[str, str] | None) -> str:
    """The fix for a bad line: in the format the spec maps, else the one the line seems to use."""
    if columns:
        return fix_for(columns, mapped=True)
    if isinstance(obj, dict) and "messages" in obj:
        return CHAT_FIX
    if isinstance(obj, dict) and ("prompt" in obj or "completion" in obj):
        return PROMPT_FIX
    return EITHER_FIX


def to_messages(obj: object, columns: Mapping[str, str] | None = None) -> tuple[tuple[Message, ...] | None, str | None]:
    """One row (a parsed JSONL line or a table row) as a conversation. Returns (messages, None)
    or (None, what is wrong). ``columns`` maps messages, or prompt + completion (+ system), to
    the row's field names; without it the row's own fields decide (see ``detect_columns``)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    keys = ", ".join(sorted(map(str, obj))) or "none"
    cols = detect_columns(map(str, obj), columns)
    if cols is None:
        half = [k for k in ("prompt", "completion") if k in obj]
        if half:
            other = "completion" if half[0] == "prompt" else "prompt"
            return None, f"a '{half[0]}' key but no '{other}' (keys: {keys})"
        return None, f"no 'messages' key, nor 'prompt' and 'completion' (keys: {keys})"
    missing = [c for c in cols.values() if c not in obj]
    if missing:
        field = next(r for r, c in cols.items() if c == missing[0])
        mapped = f" (columns.{field})" if columns else ""
        return None, f"no '{missing[0]}' key{mapped} (keys: {keys})"
    if "messages" in cols:
        name = cols["messages"]
        msgs = obj[name]
        if not isinstance(msgs, list) or not msgs:
            return None, f"'{name}' must be a non-empty list"
        items: list[tuple[str, object]] = [(f"{name}[{i}]", m) for i, m in enumerate(msgs)]
    else:
        items = []
        system = obj.get(cols["system"]) if "system" in cols else None
        if system is not None and system != "":  # no system turn for an empty system column
            if not isinstance(system, str):
                return None, f"'{cols['system']}' must be a string, got {type(system).__name__}"
            items.append((cols["system"], {"role": "system", "content": system}))
        for part, turn_role in (("prompt", "user"), ("completion", "assistant")):
            turns, problem = _turns(obj[cols[part]], cols[part], turn_role)
            if problem is not None:
                return None, problem
            assert turns is not None
            listed = isinstance(obj[cols[part]], list)
            items += [(f"{cols[part]}[{i}]" if listed else cols[part], t) for i, t in enumerate(turns)]
    out: list[Message] = []
    for i, (where, m) in enumerate(items):
        if not isinstance(m, dict):
            return None, f"{where} is not an object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return None, f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return None, f"{where}.content must be a string, got {type(content).__name__}"
        if role == "system" and i != 0:
            return None, f"{where} is a system message; only the first message may be one"
        out.append(Message(role, content))
    if not any(m.role == "assistant" for m in out):
        return None, "no assistant turn (nothing to train on)"
    if not any(m.content.strip() for m in out if m.role == "assistant"):
        return None, "every assistant turn is empty"
    return tuple(out), None


def finish(
    source: str | Path, examples: list[ChatExample], bad: list[tuple[int, str, str]], *, at: str = ":", unit: str = "line", empty_fix: str
) -> ChatDataset:
    """The dataset, or the error naming the first bad row (``where`` + ``at`` + number) and the
    numbers of up to 20 others; ``bad`` holds (number, problem, fix)."""
    if bad:
        n, problem, fix = bad[0]
        others = [str(b[0]) for b in bad[1:21]]
        more = f" (also bad: {unit}{'s' if len(others) > 1 else ''} {', '.join(others)}{' ...' if len(bad) > 21 else ''})" if others else ""
        raise DataError(f"{problem}{more}", where=f"{source}{at}{n}", fix=fix)
    if not examples:
        raise DataError("dataset has no examples", where=str(source), fix=empty_fix)
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex.as_dicts(), sort_keys=True, ensure_ascii=False).encode())
    return ChatDataset(source, tuple(examples), digest.hexdigest())


def load_chat_jsonl(path: str | Path, *, limit: int | None = None, columns: Mapping[str, str] | None = None) -> ChatDataset:
    """Read and validate a JSONL file of chat ``messages`` or ``prompt``/``completion`` lines
    (``columns`` maps other field names; see ``to_messages``).

    Blank lines are skipped. Every bad line is collected; the error names the first one and
    lists the line numbers of the others (up to 20).

    Raises:
        DataError: the file is missing, empty, not UTF-8, or has bad lines.
    """
    path = Path(path)
    file_fix = fix_for(columns, mapped=True) if columns else CHAT_FIX
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("dataset file not found", where=str(path), fix="check the path in the study's datasets") from None
    except IsADirectoryError:
        raise DataError("is a folder, not a JSONL file", where=str(path), fix="point at the .jsonl file") from None
    examples: list[ChatExample] = []
    bad: list[tuple[int, str, str]] = []
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        if len(line_bytes) > MAX_LINE_BYTES:
            bad.append((lineno, f"line is {len(line_bytes) / 2**20:.1f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit", file_fix))
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((lineno, f"not UTF-8 (bad byte 0x{line_bytes[exc.start]:02x} at column {exc.start + 1})", file_fix))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((lineno, f"not valid JSON: {exc.msg} at column {exc.colno}", file_fix))
            continue
        msgs, problem = to_messages(obj, columns)
        if problem is not None:
            bad.append((lineno, problem, _line_fix(obj, columns)))
            continue
        assert msgs is not None
        examples.append(ChatExample(msgs, lineno))
        if limit is not None and len(examples) >= limit:
            break
    return finish(path, examples, bad, empty_fix=file_fix)


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
