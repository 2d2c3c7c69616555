"""ConversationHistory: the user's conversations and their messages, page by page, for a frontend to list and reopen.

Pages use keyset cursors (a conversation's ``(updated_at, id)``, a message's ``seq``), so a page
costs the same however far back it is and a cursor stays valid while new messages arrive.
Cursors are opaque to clients: URL-safe base64 of a short versioned text.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from chatcore.approvals import EXPIRED, tool_records
from chatcore.errors import InvalidRequest
from chatcore.model import Conversation, ConversationSummary, Message, Role, ToolApproval, ToolCallRecord, utcnow
from chatcore.ports import ConversationReader, ConversationStore

T = TypeVar("T")

MAX_TITLE_LENGTH = 200
PAIR_LOOKAHEAD = 64
"""Messages read past a page's end to bring in the results of the page's last tool calls."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Some items, and the cursor of the next page (None on the last page)."""

    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A user or assistant message as a frontend shows it: an assistant's tool calls come with their results."""

    message: Message
    tool_calls: tuple[ToolCallRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationDetail:
    """One conversation, with the tool calls that wait for the user's decision."""

    conversation: Conversation
    pending_approvals: tuple[ToolApproval, ...]

    @property
    def awaiting_approval(self) -> bool:
        return bool(self.pending_approvals)


class ConversationHistory:
    """Reads conversations through the ConversationReader port, renames and deletes them (and expires their pending
    calls) through the ConversationStore; every call is scoped by user.

    Reading a conversation touches it: its calls pending for longer than ``approval_ttl_seconds`` are denied as
    expired first, so what it shows is what a decision would find.
    """

    def __init__(
        self,
        reader: ConversationReader,
        store: ConversationStore,
        *,
        approval_ttl_seconds: float = 86_400.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.reader = reader
        self.store = store
        self.approval_ttl_seconds = approval_ttl_seconds
        self.clock = clock

    async def conversation(self, user_id: str, conversation_id: uuid.UUID) -> ConversationDetail:
        """The user's conversation and its pending tool calls. Raises ConversationNotFound."""
        await self._expire(user_id, conversation_id)
        conversation = await self.reader.get(user_id, conversation_id)
        approvals = await self.store.list_approvals(user_id, conversation_id)
        return ConversationDetail(conversation, tuple(a for a in approvals if a.pending))

    async def _expire(self, user_id: str, conversation_id: uuid.UUID) -> None:
        before = self.clock() - timedelta(seconds=self.approval_ttl_seconds)
        await self.store.deny_pending(user_id, conversation_id, reason=EXPIRED, requested_before=before)

    async def conversations(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> Page[ConversationSummary]:
        """The user's conversations, most recently active first."""
        before = _decode_conversation_cursor(cursor) if cursor else None
        found = await self.reader.list_conversations(user_id, limit=limit + 1, before=before)
        items = found[:limit]
        if len(found) <= limit or not items:
            return Page(items, None)
        last = items[-1]
        return Page(items, _encode(f"c1|{last.updated_at.isoformat()}|{last.id}"))

    async def messages(
        self, user_id: str, conversation_id: uuid.UUID, *, limit: int = 50, cursor: str | None = None
    ) -> Page[HistoryEntry]:
        """The conversation's messages, oldest first; ``limit`` counts stored messages, tool results included.

        A page never ends between a tool call and its results: it is extended (by at most
        PAIR_LOOKAHEAD messages) to the last result, so every call on the page shows its outcome.
        """
        after = _decode_message_cursor(cursor) if cursor else 0
        await self._expire(user_id, conversation_id)
        found = list(await self.reader.list_messages(user_id, conversation_id, limit=limit + 1, after_seq=after))
        more = len(found) > limit
        page = found[:limit]
        if more and page and (page[-1].role is Role.TOOL or page[-1].tool_calls):
            following = await self.reader.list_messages(
                user_id, conversation_id, limit=PAIR_LOOKAHEAD + 1, after_seq=page[-1].seq
            )
            results = 0
            while results < len(following) and following[results].role is Role.TOOL:
                results += 1
            page.extend(following[:results])
            more = len(following) > results
        asked = [m.id for m in page if m.tool_calls]
        approvals = await self.store.list_approvals(user_id, conversation_id, message_ids=asked) if asked else ()
        return Page(tuple(_entries(page, approvals)), _encode(f"m1|{page[-1].seq}") if more and page else None)

    async def rename(self, user_id: str, conversation_id: uuid.UUID, title: str) -> Conversation:
        return await self.store.rename(user_id, conversation_id, valid_title(title))

    async def delete(self, user_id: str, conversation_id: uuid.UUID) -> None:
        await self.store.delete(user_id, conversation_id)


def valid_title(title: str) -> str:
    """A title as stored: one line, trimmed, 1 to MAX_TITLE_LENGTH characters, no NUL."""
    cleaned = " ".join(title.split())
    if "\x00" in cleaned:
        raise InvalidRequest("title must not contain NUL characters")
    if not cleaned:
        raise InvalidRequest("title must not be empty")
    if len(cleaned) > MAX_TITLE_LENGTH:
        raise InvalidRequest(f"title must be at most {MAX_TITLE_LENGTH} characters")
    return cleaned


def _entries(messages: Sequence[Message], approvals: Sequence[ToolApproval]) -> list[HistoryEntry]:
    tool_messages = [m for m in messages if m.role is Role.TOOL]
    return [
        HistoryEntry(m, tuple(tool_records([m, *tool_messages], approvals)) if m.tool_calls else ())
        for m in messages
        if m.role is not Role.TOOL
    ]


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str, kind: str) -> list[str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("cursor is not valid") from None
    parts = text.split("|")
    if not parts or parts[0] != kind:
        raise InvalidRequest("cursor is not valid")
    return parts[1:]


def _decode_conversation_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    parts = _decode(cursor, "c1")
    try:
        updated_at, conversation_id = datetime.fromisoformat(parts[0]), uuid.UUID(parts[1])
    except (IndexError, ValueError):
        raise InvalidRequest("cursor is not valid") from None
    if updated_at.tzinfo is None:
        raise InvalidRequest("cursor is not valid")
    return updated_at, conversation_id


def _decode_message_cursor(cursor: str) -> int:
    parts = _decode(cursor, "m1")
    try:
        seq = int(parts[0])
    except (IndexError, ValueError):
        raise InvalidRequest("cursor is not valid") from None
    if seq < 0 or len(parts) != 1:
        raise InvalidRequest("cursor is not valid")
    return seq
