"""The fake model's mind, shared by both wire formats: a todo assistant that answers with tool calls.

It reads what a real model would read — the user's last words, or the results of the tools it asked
for — and decides the next step. Deterministic on purpose: the integration tests know in advance
which tool a message leads to, and can check every byte that travels.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

GREETING = "I can add, list, complete and delete tasks for you, and echo text back."

_ADD = re.compile(r"\badd (?:a )?tasks? to (?P<rest>.+)", re.IGNORECASE | re.DOTALL)
_MORE_TITLES = re.compile(r"\s+and (?:a task )?to\s+", re.IGNORECASE)
_DELETE = re.compile(r"\b(?:delete|remove)\b.*?\btask\s+#?(?P<id>\d+)", re.IGNORECASE)
_COMPLETE = re.compile(r"\b(?:complete|finish|mark)\b.*?\btask\s+#?(?P<id>\d+)", re.IGNORECASE)
_LIST = re.compile(r"\b(?:list|show|what)\b", re.IGNORECASE)
_ECHO = re.compile(r"\becho\s+(?P<text>.+)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """A tool call the fake model decided on; each wire format gives it its own id and shape."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A tool result as the model reads it back: the text it was sent, and whether it was an error."""

    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The next step: text to say, and the calls to make (none means the turn is over)."""

    text: str
    calls: tuple[PlannedCall, ...] = field(default=())


def respond_to_user(text: str, offered: Collection[str]) -> Decision:
    """Pick the tool(s) the user's words ask for; refuse honestly when the request did not offer that tool."""
    calls = _plan(text)
    missing = sorted({call.name for call in calls} - set(offered))
    if missing:
        return Decision(f"I have no tool named {', '.join(missing)}.")
    if not calls:
        return Decision(GREETING)
    return Decision("", calls)


def respond_to_results(outcomes: Sequence[ToolOutcome]) -> Decision:
    """The final answer, quoting every result so a test can see exactly what the model was sent."""
    parts = [f"{o.name} failed: {o.content}" if o.is_error else f"{o.name} returned {o.content}" for o in outcomes]
    return Decision("Done. " + "; ".join(parts))


def _plan(text: str) -> tuple[PlannedCall, ...]:
    if echo := _ECHO.search(text):
        return (PlannedCall("echo", {"text": echo["text"].strip()}),)
    if delete := _DELETE.search(text):
        return (PlannedCall("delete_task", {"task_id": int(delete["id"])}),)
    if complete := _COMPLETE.search(text):
        return (PlannedCall("complete_task", {"task_id": int(complete["id"])}),)
    if add := _ADD.search(text):
        titles = [_title(part) for part in _MORE_TITLES.split(add["rest"]) if _title(part)]
        return tuple(PlannedCall("add_task", {"title": title}) for title in titles)
    if _LIST.search(text):
        return (PlannedCall("list_tasks", {}),)
    return ()


def _title(words: str) -> str:
    """'buy milk.' -> 'Buy milk', as the offline agent writes titles."""
    cleaned = words.strip().rstrip(".!?").strip()
    return cleaned[:1].upper() + cleaned[1:]


_WORD = re.compile(r"\s*\S+\s*|\s+")


def text_pieces(text: str, size: int | None = None) -> list[str]:
    """How the fake streams ``text``: a word at a time (whitespace kept), or ``size`` characters at a time."""
    if size:
        return [text[start : start + size] for start in range(0, len(text), size)]
    return _WORD.findall(text)


def json_pieces(text: str) -> list[str]:
    """Tool-call arguments as streamed: the JSON text in three pieces of about equal length (empty ones left out)."""
    third = max(1, -(-len(text) // 3))
    return [text[start : start + third] for start in range(0, len(text), third)]


def digest(value: Any, length: int) -> str:
    """``length`` hex digits standing for ``value``: the same request gets the same ids, streamed or not."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]
