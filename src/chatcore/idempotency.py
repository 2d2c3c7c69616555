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
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal

from chatcore.errors import InvalidMessage
from chatcore.model import ChatReply, JsonValue, ReplyStatus, ToolApproval, ToolCall, ToolCallRecord
from chatcore.usage import UsageTotals

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
                **({} if call.approval is None else {"approval": approval_to_json(call.approval)}),
            }
            for call in reply.tool_calls
        ],
        "status": reply.status.value,
        "pending_approvals": [
            {"id": call.id, "name": call.name, "arguments": canonical(dict(call.arguments))}
            for call in reply.pending_approvals
        ],
        **({} if reply.usage is None else {"usage": usage_to_json(reply.usage)}),
    }


def usage_to_json(usage: UsageTotals) -> dict[str, JsonValue]:
    """A turn's usage as a stored reply keeps it: every count, and the cost as exact decimal text."""
    counts: dict[str, JsonValue] = {f.name: getattr(usage, f.name) for f in fields(usage) if f.name != "cost_usd"}
    return {**counts, "cost_usd": None if usage.cost_usd is None else str(usage.cost_usd)}


def usage_from_json(data: Mapping[str, JsonValue]) -> UsageTotals:
    cost = data.get("cost_usd")
    counts = {f.name: int(data.get(f.name, 0)) for f in fields(UsageTotals) if f.name != "cost_usd"}
    return UsageTotals(**counts, cost_usd=None if cost is None else Decimal(str(cost)))


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
                approval=approval_from_json(call["approval"]) if "approval" in call else None,
            )
            for call in data["tool_calls"]
        ),
        # Replies stored before approvals existed have neither field: they were complete, with nothing pending.
        status=ReplyStatus(data.get("status", ReplyStatus.COMPLETE)),
        pending_approvals=tuple(
            ToolCall(call["id"], call["name"], canonical(call["arguments"]))
            for call in data.get("pending_approvals", ())
        ),
        # Replies stored before usage was recorded have none.
        usage=usage_from_json(data["usage"]) if "usage" in data else None,
    )


def approval_to_json(approval: ToolApproval) -> dict[str, JsonValue]:
    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "tool_call_id": approval.tool_call_id,
        "name": approval.name,
        "arguments": canonical(dict(approval.arguments)),
        "conversation_id": str(approval.conversation_id),
        "turn_id": str(approval.turn_id),
        "message_id": str(approval.message_id),
        "requested_at": moment(approval.requested_at),
        "approved": approval.approved,
        "reason": approval.reason,
        "decided_at": moment(approval.decided_at),
        "started_at": moment(approval.started_at),
    }


def approval_from_json(data: Mapping[str, JsonValue]) -> ToolApproval:
    def moment(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    requested_at = moment(data["requested_at"])
    assert requested_at is not None
    return ToolApproval(
        tool_call_id=data["tool_call_id"],
        name=data["name"],
        arguments=canonical(data["arguments"]),
        conversation_id=uuid.UUID(data["conversation_id"]),
        turn_id=uuid.UUID(data["turn_id"]),
        message_id=uuid.UUID(data["message_id"]),
        requested_at=requested_at,
        approved=data["approved"],
        reason=data["reason"],
        decided_at=moment(data["decided_at"]),
        started_at=moment(data["started_at"]),
    )


def as_replayed(reply: ChatReply) -> ChatReply:
    """The reply exactly as a replay will return it, so the first answer and every retry are byte-identical."""
    return reply_from_json(reply_to_json(reply))


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What a live Idempotency-Key holds: the request it belongs to, the turn that claimed it, and (once that turn
    finished) its reply. Read by a streamed retry, which follows the turn instead of waiting for the reply."""

    request_hash: str
    turn_id: uuid.UUID | None
    """The turn that claimed the key: running while ``reply`` is None, else the turn that answered (None for a reply
    stored before keys kept their turn)."""
    reply: ChatReply | None


@dataclass(frozen=True, slots=True)
class IdempotentReply:
    """A finished keyed turn's reply, stored with its messages in one transaction and kept ``ttl_seconds``."""

    key: str
    reply: ChatReply
    ttl_seconds: float
