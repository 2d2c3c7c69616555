"""Messages and conversations to their rows and back: the one mapping the SQL stores and statements share.

``MESSAGE_COLUMNS`` and ``CONVERSATION_COLUMNS`` fix the order in which statements select them, so rows can be
read by position (SQLAlchemy ``Row``s and asyncpg ``Record``s alike). The PostgreSQL window's JSON, decoded by
msgspec straight into ``Message``, is ``turn_statements.window_messages``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import RowMapping

from chatcore.adapters.sqlalchemy.tables import as_utc, conversations, messages
from chatcore.model import ChatMessage, Conversation, Message, MessageStatus, Role, ToolCall

_C = conversations.c
_M = messages.c

CONVERSATION_COLUMNS: Final = (_C.id, _C.user_id, _C.title, _C.created_at, _C.updated_at, _C.last_seq)
"""A conversation as statements select it, in this order (``conversation_from_row`` reads the first five)."""
LAST_SEQ: Final = CONVERSATION_COLUMNS.index(_C.last_seq)

MESSAGE_COLUMNS: Final = (
    _M.id,
    _M.conversation_id,
    _M.seq,
    _M.role,
    _M.content,
    _M.tool_calls,
    _M.tool_call_id,
    _M.is_error,
    _M.status,
    _M.turn_id,
    _M.created_at,
)
"""The message columns statements write and read, in this order."""


def stored_message(message: ChatMessage, conversation_id: uuid.UUID, seq: int, turn_id: uuid.UUID) -> Message:
    """``message`` as it is stored at ``seq``: a batch's ``Message`` keeps its status, anything else is COMPLETE."""
    return Message(
        id=message.id,
        role=message.role,
        content=message.content,
        tool_calls=tuple(message.tool_calls),
        tool_call_id=message.tool_call_id,
        is_error=message.is_error,
        created_at=as_utc(message.created_at),
        conversation_id=conversation_id,
        seq=seq,
        status=message.status if isinstance(message, Message) else MessageStatus.COMPLETE,
        turn_id=turn_id,
    )


def message_row(message: Message) -> dict[str, Any]:
    """The column values of a stored message, by column name."""
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "role": message.role.value,
        "content": message.content,
        "tool_calls": calls_to_json(message.tool_calls),
        "tool_call_id": message.tool_call_id,
        "is_error": message.is_error,
        "status": message.status.value,
        "turn_id": message.turn_id,
        "created_at": message.created_at,
    }


def message_from_row(row: RowMapping, prefix: str = "") -> Message:
    """A message from a row's columns, named ``prefix`` + column name."""
    return Message(
        id=row[prefix + "id"],
        role=Role(row[prefix + "role"]),
        content=row[prefix + "content"],
        tool_calls=calls_from_json(row[prefix + "tool_calls"]),
        tool_call_id=row[prefix + "tool_call_id"],
        is_error=bool(row[prefix + "is_error"]),
        created_at=row[prefix + "created_at"],
        conversation_id=row[prefix + "conversation_id"],
        seq=row[prefix + "seq"],
        status=MessageStatus(row[prefix + "status"]),
        turn_id=row[prefix + "turn_id"],
    )


def conversation_from_row(row: Sequence[Any]) -> Conversation:
    """The conversation of a row that starts with ``CONVERSATION_COLUMNS``."""
    return Conversation(id=row[0], user_id=row[1], title=row[2], created_at=row[3], updated_at=row[4])


def calls_to_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    return [{"id": call.id, "name": call.name, "arguments": dict(call.arguments)} for call in calls]


def calls_from_json(value: Any) -> tuple[ToolCall, ...]:
    if not value:
        return ()
    return tuple(ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments") or {}) for c in value)
