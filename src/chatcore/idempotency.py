"""Idempotent retries: what identifies a request, and how a reply is kept to be played back.

A client that timed out cannot know whether its turn ran; it retries with the same
``Idempotency-Key``, and the stored reply (same ids) is returned instead of running the
model and its tools a second time. Pure functions and values, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from chatcore.errors import InvalidMessage
from chatcore.model import ChatReply, JsonValue, ToolCallRecord

MAX_KEY_LENGTH = 255


def validate_idempotency_key(key: str) -> str:
    """The key as given, or InvalidMessage: 1 to 255 printable ASCII characters, as the header allows."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidMessage(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    if not all(" " <= char <= "~" for char in key):
        raise InvalidMessage("Idempotency-Key must be printable ASCII")
    return key


def request_fingerprint(user_id: str, message: str, conversation_id: uuid.UUID | None) -> str:
    """SHA-256 (64 hex digits) of the canonical request, so a key reused for another request is recognised."""
    canonical = json.dumps(
        {"user_id": user_id, "message": message, "conversation_id": str(conversation_id) if conversation_id else None},
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def canonical(value: JsonValue) -> JsonValue:
    """``value`` as JSON would carry it, objects' keys sorted at every depth.

    A database may keep JSON objects in its own key order (PostgreSQL's JSONB does), so a reply is
    put in this form both when it is first answered and when it is read back: byte for byte the same.
    """
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str).replace("\\u0000", "\\ufffd"))


def reply_to_json(reply: ChatReply) -> dict[str, JsonValue]:
    """The reply as a JSON object; tool results pass through the same encoding as stored tool messages."""
    return {
        "conversation_id": str(reply.conversation_id),
        "message_id": str(reply.message_id),
        "response": reply.response,
        "tool_calls": [
            {
                "id": call.id,
                "name": call.name,
                "arguments": canonical(dict(call.arguments)),
                "result": canonical(call.result),
                "error": call.error,
            }
            for call in reply.tool_calls
        ],
    }


def reply_from_json(data: Mapping[str, JsonValue]) -> ChatReply:
    return ChatReply(
        conversation_id=uuid.UUID(data["conversation_id"]),
        message_id=uuid.UUID(data["message_id"]),
        response=data["response"],
        tool_calls=tuple(
            ToolCallRecord(
                id=call["id"],
                name=call["name"],
                arguments=canonical(call["arguments"]),
                result=canonical(call["result"]),
                error=call["error"],
            )
            for call in data["tool_calls"]
        ),
    )


def as_replayed(reply: ChatReply) -> ChatReply:
    """The reply exactly as a replay will return it, so the first answer and every retry are byte-identical."""
    return reply_from_json(reply_to_json(reply))


@dataclass(frozen=True, slots=True)
class IdempotentReply:
    """A finished keyed turn's reply, stored with its messages in one transaction and kept ``ttl_seconds``."""

    key: str
    reply: ChatReply
    ttl_seconds: float
