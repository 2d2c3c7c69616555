"""Making stored history safe to replay to any provider.

Providers reject a tool result without the call that asked for it, and a call
without its result. History can be cut by a window, broken by a crash in an
older version, or imported; these functions repair it deterministically so one
bad row never wedges a conversation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from chatcore.model import ChatMessage, MessageStatus, Role

M = TypeVar("M", bound=ChatMessage)

INTERRUPTED_ERROR = "interrupted: it may or may not have run"
"""The result of a call that has no stored result: its turn died (or lost its hold) while the call ran, so it may
or may not have had its effect; the model is told so, and the call is never run again."""
INTERRUPTED_RESULT = json.dumps({"error": INTERRUPTED_ERROR})


def repair_tool_pairs(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Drop tool results whose call is not open; give every call left unanswered an "interrupted" result.

    A call is open from its assistant message until the next non-tool message.
    """
    repaired: list[ChatMessage] = []
    open_calls: dict[str, None] = {}

    def close_open_calls() -> None:
        for call_id in open_calls:
            repaired.append(
                ChatMessage(role=Role.TOOL, content=INTERRUPTED_RESULT, tool_call_id=call_id, is_error=True)
            )
        open_calls.clear()

    for message in messages:
        role = message.role
        if role is Role.TOOL:
            if message.tool_call_id in open_calls:
                del open_calls[message.tool_call_id]
                repaired.append(message)
            continue
        if open_calls:
            close_open_calls()
        repaired.append(message)
        if role is Role.ASSISTANT and message.tool_calls:
            open_calls = {call.id: None for call in message.tool_calls}
    close_open_calls()
    return repaired


def estimate_tokens(message: ChatMessage) -> int:
    """A network-free estimate (about four characters a token, plus framing) good enough to budget context.

    Tool-call arguments are measured by their ``repr``, within a few characters of their JSON and far
    cheaper to make: every message of a window is estimated on every turn.
    """
    size = len(message.content)
    for call in message.tool_calls:
        size += len(call.name) + len(repr(call.arguments))
    return size // 4 + 4


def window(messages: Sequence[M], *, max_messages: int, max_tokens: int | None = None) -> list[M]:
    """The newest messages within both budgets; a window that would cut a tool pair moves to the pair's start.

    ``messages`` may hold a few more than ``max_messages`` (the store reads some slack) so that the
    assistant call a cut would orphan can be brought back; when it is not there, the orphaned
    results are dropped instead. Superseded replies are not history any more and are left out first.
    """
    messages = [m for m in messages if getattr(m, "status", None) is not MessageStatus.SUPERSEDED]
    if max_messages <= 0 or not messages:
        return []
    start = max(len(messages) - max_messages, 0)
    budget = max_tokens
    if budget is not None:
        for index in range(len(messages) - 1, start - 1, -1):
            budget -= estimate_tokens(messages[index])
            if budget < 0 and index < len(messages) - 1:
                start = index + 1
                break
    if messages[start].role is Role.TOOL:
        pair_start = start
        while pair_start > 0 and messages[pair_start].role is Role.TOOL:
            pair_start -= 1
        if messages[pair_start].role is Role.ASSISTANT and messages[pair_start].tool_calls:
            start = pair_start
    kept = list(messages[start:])
    while kept and kept[0].role is Role.TOOL:
        kept.pop(0)
    return kept


def for_model(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """History as it is sent to a model: superseded replies left out, pairs repaired, interrupted replies labelled."""
    labelled = [
        replace(m, content=(m.content + "\n[reply interrupted]").strip())
        if getattr(m, "status", None) is MessageStatus.INTERRUPTED and m.role is Role.ASSISTANT
        else m
        for m in messages
        if getattr(m, "status", None) is not MessageStatus.SUPERSEDED
    ]
    return repair_tool_pairs(labelled)
