"""In-memory adapters of every port, for library users' tests and for the offline demo.

They really work (the contract suites run against them too) and record what
happened, so tests assert on outcomes instead of on mocked calls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from chatcore.approvals import EXPIRED, already_decided
from chatcore.errors import (
    AgentError,
    ConversationBusy,
    ConversationNotFound,
    DecisionConflict,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    LeaseLost,
    NothingToRegenerate,
    StoreUnavailable,
    ToolCallNotFound,
    ToolError,
    TurnNotFound,
    TurnStillOpen,
    Unauthenticated,
)
from chatcore.idempotency import IdempotencyRecord, IdempotentReply
from chatcore.model import (
    PREVIEW_LENGTH,
    AbandonedTurn,
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    ChatReply,
    Conversation,
    ConversationSummary,
    JsonValue,
    Message,
    MessageStatus,
    Principal,
    Role,
    ToolApproval,
    ToolDecision,
    ToolSpec,
    TurnEvent,
    TurnNotice,
    TurnResumption,
    TurnStart,
    TurnState,
    TurnStatus,
    Usage,
    utcnow,
)
from chatcore.turn_events import DONE, ERROR, TurnWatches, stream_of_response
from chatcore.usage import ModelCall, RecordedCall, UsageGroup, UsageGrouping, UsageTotals, recorded


@dataclass(slots=True)
class _Lease:
    owner: uuid.UUID
    expires_at: datetime


@dataclass(slots=True)
class _KeyRecord:
    request_hash: str
    turn_id: uuid.UUID | None
    """The turn holding the key while it runs (``reply`` None), then the turn that answered."""
    reply: ChatReply | None
    expires_at: datetime


class InMemoryChatDatabase:
    """One in-memory database of conversations, their messages, leases, Idempotency-Keys and approvals, shared
    by the in-memory ConversationStore, TurnClaimStore, ConversationReader, TurnEventStore and RetentionStore as a
    database is shared by the SQL adapters. ``available = False`` simulates an outage; ``clock`` judges lease and
    key expiry.
    """

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.conversations: dict[uuid.UUID, Conversation] = {}
        self.messages: dict[uuid.UUID, list[Message]] = {}
        self.leases: dict[uuid.UUID, _Lease] = {}
        self.idempotency_keys: dict[tuple[str, str], _KeyRecord] = {}
        self.approvals: dict[tuple[uuid.UUID, str], ToolApproval] = {}
        self.open_turns: dict[uuid.UUID, uuid.UUID] = {}
        self.usage: list[RecordedCall] = []
        """Every model call recorded with its turn (``InMemoryUsageStore`` reads them)."""
        self.available = True
        self.clock = clock
        self.lock = asyncio.Lock()

    def held_by_another(self, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
        lease = self.leases.get(conversation_id)
        return lease is not None and lease.owner != turn_id and lease.expires_at > self.clock()

    def live_key(self, user_id: str, key: str) -> _KeyRecord | None:
        record = self.idempotency_keys.get((user_id, key))
        if record is not None and record.expires_at <= self.clock():
            del self.idempotency_keys[(user_id, key)]
            return None
        return record

    def check(self) -> None:
        if not self.available:
            raise StoreUnavailable()

    def owned(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise ConversationNotFound()
        return conversation

    def append(self, conversation: Conversation, messages: Sequence[ChatMessage], turn_id: uuid.UUID) -> list[Message]:
        stored = self.messages.setdefault(conversation.id, [])
        known = {m.id for m in stored}
        new_ids = [m.id for m in messages]
        if len(set(new_ids)) != len(new_ids) or known.intersection(new_ids):
            raise ValueError("duplicate message id: nothing of this batch was stored")
        next_seq = stored[-1].seq + 1 if stored else 1
        added = [
            Message(
                id=m.id,
                role=m.role,
                content=m.content,
                tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id,
                is_error=m.is_error,
                created_at=m.created_at,
                conversation_id=conversation.id,
                seq=next_seq + i,
                turn_id=turn_id,
                status=getattr(m, "status", MessageStatus.COMPLETE),
            )
            for i, m in enumerate(messages)
        ]
        stored.extend(added)
        self.conversations[conversation.id] = replace(conversation, updated_at=utcnow())
        return added

    def approvals_of(self, conversation_id: uuid.UUID) -> list[ToolApproval]:
        return sorted(
            (a for a in self.approvals.values() if a.conversation_id == conversation_id),
            key=lambda a: (a.requested_at, self.seq_of(a)),
        )

    def seq_of(self, approval: ToolApproval) -> int:
        for message in self.messages.get(approval.conversation_id, []):
            if message.id == approval.message_id:
                return message.seq
        return 0

    def deny(self, conversation_id: uuid.UUID, reason: str, requested_before: datetime | None) -> None:
        now = self.clock()
        for key, approval in list(self.approvals.items()):
            if approval.conversation_id != conversation_id or not approval.pending:
                continue
            if requested_before is None or approval.requested_at < requested_before:
                self.approvals[key] = replace(approval, approved=False, reason=reason, decided_at=now)

    def lease_held_by(self, turn_id: uuid.UUID, user_id: str, conversation_id: uuid.UUID) -> _Lease | None:
        """The lease ``turn_id`` holds on the user's conversation (even expired, while nobody took it over)."""
        lease = self.leases.get(conversation_id)
        owned = self.conversations.get(conversation_id)
        if lease is None or lease.owner != turn_id or owned is None or owned.user_id != user_id:
            return None
        return lease


class _OverDatabase:
    """An in-memory adapter over an InMemoryChatDatabase: a new one of its own unless one is given to share."""

    def __init__(self, database: InMemoryChatDatabase | None = None, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database if database is not None else InMemoryChatDatabase(clock=clock)


class InMemoryConversationStore(_OverDatabase):
    """A ConversationStore (with its ToolApprovalStore part) in dicts. ``InMemoryTurnClaimStore(store.database)``
    and ``InMemoryConversationReader(store.database)`` work on the same data."""

    async def begin_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID | None,
        message: ChatMessage,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        title: str | None = None,
        lease_seconds: float | None = None,
    ) -> TurnStart:
        async with self.database.lock:
            self.database.check()
            created = conversation_id is None
            if conversation_id is None:
                now = utcnow()
                conversation = Conversation(uuid.uuid4(), user_id, title, now, now)
                self.database.conversations[conversation.id] = conversation
            else:
                conversation = self.database.owned(user_id, conversation_id)
                if self.database.held_by_another(conversation.id, turn_id):
                    raise ConversationBusy()
                if conversation.id in self.database.open_turns:
                    raise TurnStillOpen(self.database.open_turns[conversation.id])
            if lease_seconds is not None:
                self.database.leases[conversation.id] = _Lease(
                    turn_id, self.database.clock() + timedelta(seconds=lease_seconds)
                )
            existing = self.database.messages.get(conversation.id, [])
            window = tuple(existing[-history_limit:]) if history_limit > 0 else ()
            [user_message] = self.database.append(conversation, [message], turn_id)
            return TurnStart(self.database.conversations[conversation.id], window, user_message, created)

    async def append_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
        holder: uuid.UUID,
        approvals: Sequence[ToolApproval] = (),
        close: bool = False,
        usage: Sequence[ModelCall] = (),
    ) -> tuple[Message, ...]:
        async with self.database.lock:
            self.database.check()
            conversation = self.database.owned(user_id, conversation_id)
            if self.database.held_by_another(conversation_id, holder):
                raise LeaseLost()
            added = tuple(self.database.append(conversation, messages, turn_id))
            self.database.usage.extend(recorded(user_id, conversation_id, turn_id, usage))
            for approval in approvals:
                self.database.approvals[(approval.message_id, approval.tool_call_id)] = replace(
                    approval, conversation_id=conversation_id, turn_id=turn_id, requested_at=self.database.clock()
                )
            if approvals:
                self.database.open_turns[conversation_id] = turn_id
            elif close:
                self.database.open_turns.pop(conversation_id, None)
            return added

    async def finish_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
        holder: uuid.UUID | None = None,
        idempotency: IdempotentReply | None = None,
        keep_open: bool = False,
        usage: Sequence[ModelCall] = (),
    ) -> tuple[Message, ...]:
        holder = turn_id if holder is None else holder
        async with self.database.lock:
            self.database.check()
            conversation = self.database.owned(user_id, conversation_id)
            if self.database.held_by_another(conversation_id, holder):
                raise LeaseLost()
            record = None
            if idempotency is not None:
                record = self.database.live_key(user_id, idempotency.key)
                if record is None or record.turn_id != holder or record.reply is not None:
                    raise LeaseLost()
            added = tuple(self.database.append(conversation, messages, turn_id))
            self.database.usage.extend(recorded(user_id, conversation_id, turn_id, usage))
            self.database.leases.pop(conversation_id, None)
            if not keep_open:
                self.database.open_turns.pop(conversation_id, None)
            if record is not None and idempotency is not None:
                record.reply = idempotency.reply
                record.expires_at = self.database.clock() + timedelta(seconds=idempotency.ttl_seconds)
            return added

    async def resume_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID,
        *,
        holder: uuid.UUID,
        lease_seconds: float,
        history_limit: int,
    ) -> TurnResumption:
        async with self.database.lock:
            self.database.check()
            conversation = self.database.owned(user_id, conversation_id)
            if self.database.held_by_another(conversation_id, holder):
                raise ConversationBusy()
            self.database.leases[conversation_id] = _Lease(
                holder, self.database.clock() + timedelta(seconds=lease_seconds)
            )
            stored = self.database.messages.get(conversation_id, [])
            turn = tuple(m for m in stored if m.turn_id == turn_id)
            before = [m for m in stored if not turn or m.seq < turn[0].seq]
            return TurnResumption(
                conversation=conversation,
                turn_id=turn_id,
                open=self.database.open_turns.get(conversation_id) == turn_id,
                history=tuple(before[-history_limit:]) if history_limit > 0 else (),
                turn=turn,
                approvals=tuple(a for a in self.database.approvals_of(conversation_id) if a.turn_id == turn_id),
            )

    async def begin_regeneration(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        lease_seconds: float | None = None,
    ) -> TurnStart:
        async with self.database.lock:
            self.database.check()
            conversation = self.database.owned(user_id, conversation_id)
            if self.database.held_by_another(conversation_id, turn_id):
                raise ConversationBusy()
            if conversation_id in self.database.open_turns:
                raise TurnStillOpen(self.database.open_turns[conversation_id])
            stored = self.database.messages.get(conversation_id, [])
            users = [
                i for i, m in enumerate(stored) if m.role is Role.USER and m.status is not MessageStatus.SUPERSEDED
            ]
            if not users:
                raise NothingToRegenerate()
            if lease_seconds is not None:
                self.database.leases[conversation_id] = _Lease(
                    turn_id, self.database.clock() + timedelta(seconds=lease_seconds)
                )
            last = users[-1]
            stored[last] = user_message = replace(stored[last], status=MessageStatus.COMPLETE, turn_id=turn_id)
            for index in range(last + 1, len(stored)):
                stored[index] = replace(stored[index], status=MessageStatus.SUPERSEDED)
            window = tuple(stored[max(last - history_limit, 0) : last]) if history_limit > 0 else ()
            conversation = replace(conversation, updated_at=utcnow())
            self.database.conversations[conversation_id] = conversation
            return TurnStart(conversation, window, user_message, created=False)

    async def mark_unanswered(self, user_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        async with self.database.lock:
            self.database.check()
            self.database.owned(user_id, conversation_id)
            stored = self.database.messages.get(conversation_id, [])
            for index, message in enumerate(stored):
                if message.id == message_id:
                    stored[index] = replace(message, status=MessageStatus.UNANSWERED)

    async def turn_messages(self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> tuple[Message, ...]:
        self.database.check()
        self.database.owned(user_id, conversation_id)
        return tuple(m for m in self.database.messages.get(conversation_id, []) if m.turn_id == turn_id)

    async def rename(self, user_id: str, conversation_id: uuid.UUID, title: str) -> Conversation:
        async with self.database.lock:
            self.database.check()
            renamed = replace(self.database.owned(user_id, conversation_id), title=title)
            self.database.conversations[conversation_id] = renamed
            return renamed

    async def delete(self, user_id: str, conversation_id: uuid.UUID) -> None:
        async with self.database.lock:
            self.database.check()
            self.database.owned(user_id, conversation_id)
            del self.database.conversations[conversation_id]
            self.database.messages.pop(conversation_id, None)
            self.database.open_turns.pop(conversation_id, None)
            for key in [k for k, a in self.database.approvals.items() if a.conversation_id == conversation_id]:
                del self.database.approvals[key]

    async def ping(self) -> None:
        self.database.check()

    # --- its ToolApprovalStore part ----------------------------------------------------------------------------

    async def decide_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        decisions: Sequence[ToolDecision],
        *,
        expire_before: datetime,
    ) -> tuple[ToolApproval, ...]:
        async with self.database.lock:
            self.database.check()
            self.database.owned(user_id, conversation_id)
            saved = dict(self.database.approvals)
            self.database.deny(conversation_id, EXPIRED, expire_before)
            latest = {a.tool_call_id: a for a in self.database.approvals_of(conversation_id)}
            named = [latest.get(d.tool_call_id) for d in decisions]
            found = [a for a in named if a is not None]
            try:
                if len(found) != len(named):
                    raise ToolCallNotFound()
                if len({a.turn_id for a in found}) > 1:
                    raise DecisionConflict("The decisions name tool calls of different turns")
                for decision, approval in zip(decisions, found, strict=True):
                    if approval.pending:
                        self.database.approvals[(approval.message_id, approval.tool_call_id)] = replace(
                            approval,
                            approved=decision.approved,
                            reason=decision.reason,
                            decided_at=self.database.clock(),
                        )
                    elif approval.approved is not decision.approved:
                        raise DecisionConflict(already_decided(approval))
            except (ToolCallNotFound, DecisionConflict):
                self.database.approvals = saved  # all or nothing, the expiry included
                raise
            return tuple(a for a in self.database.approvals_of(conversation_id) if a.turn_id == found[0].turn_id)

    async def deny_pending(
        self, user_id: str, conversation_id: uuid.UUID, *, reason: str, requested_before: datetime | None = None
    ) -> None:
        async with self.database.lock:
            self.database.check()
            conversation = self.database.conversations.get(conversation_id)
            if conversation is not None and conversation.user_id == user_id:
                self.database.deny(conversation_id, reason, requested_before)

    async def start_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        calls: Sequence[tuple[uuid.UUID, str]],
        *,
        holder: uuid.UUID,
    ) -> tuple[tuple[uuid.UUID, str], ...]:
        async with self.database.lock:
            self.database.check()
            self.database.owned(user_id, conversation_id)
            lease = self.database.leases.get(conversation_id)
            if lease is None or lease.owner != holder:
                return ()
            started = []
            for key in calls:
                approval = self.database.approvals.get(key)
                if approval is None or approval.conversation_id != conversation_id:
                    continue
                if approval.approved and approval.started_at is None:
                    self.database.approvals[key] = replace(approval, started_at=self.database.clock())
                    started.append(key)
            return tuple(started)

    async def list_approvals(
        self, user_id: str, conversation_id: uuid.UUID, *, message_ids: Sequence[uuid.UUID] | None = None
    ) -> tuple[ToolApproval, ...]:
        self.database.check()
        self.database.owned(user_id, conversation_id)
        wanted = None if message_ids is None else set(message_ids)
        return tuple(a for a in self.database.approvals_of(conversation_id) if wanted is None or a.message_id in wanted)


class InMemoryTurnClaimStore(_OverDatabase):
    """A TurnClaimStore over the leases and Idempotency-Keys of an InMemoryChatDatabase."""

    async def renew_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
        lease_seconds: float,
    ) -> bool:
        async with self.database.lock:
            self.database.check()
            until = self.database.clock() + timedelta(seconds=lease_seconds)
            held = True
            if conversation_id is not None:
                lease = self.database.lease_held_by(turn_id, user_id, conversation_id)
                if lease is not None:
                    lease.expires_at = until
                else:
                    held = False
            if idempotency_key is not None:
                record = self.database.idempotency_keys.get((user_id, idempotency_key))
                if record is not None and record.turn_id == turn_id and record.reply is None:
                    record.expires_at = until
                else:
                    held = False
            return held

    async def release_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
    ) -> None:
        async with self.database.lock:
            self.database.check()
            if conversation_id is not None and self.database.lease_held_by(turn_id, user_id, conversation_id):
                del self.database.leases[conversation_id]
            if idempotency_key is not None:
                record = self.database.idempotency_keys.get((user_id, idempotency_key))
                if record is not None and record.turn_id == turn_id and record.reply is None:
                    del self.database.idempotency_keys[(user_id, idempotency_key)]

    async def idempotency_record(self, user_id: str, key: str) -> IdempotencyRecord | None:
        async with self.database.lock:
            self.database.check()
            record = self.database.live_key(user_id, key)
            return None if record is None else IdempotencyRecord(record.request_hash, record.turn_id, record.reply)

    async def abandoned_turn(self, user_id: str, key: str) -> AbandonedTurn | None:
        self.database.check()
        record = self.database.idempotency_keys.get((user_id, key))
        if record is None or record.reply is not None or record.expires_at > self.database.clock():
            return None
        turn_id = record.turn_id
        if turn_id is None:
            return None
        for conversation_id, stored in self.database.messages.items():
            owned = self.database.conversations.get(conversation_id)
            if owned is None or owned.user_id != user_id:
                continue
            for index, message in enumerate(stored):
                if message.turn_id == turn_id and message.role is Role.USER:
                    last = all(m.turn_id == turn_id for m in stored[index + 1 :])
                    return AbandonedTurn(turn_id, conversation_id, last)
        return None

    async def claim_idempotency_key(
        self,
        user_id: str,
        key: str,
        request_hash: str,
        *,
        turn_id: uuid.UUID,
        hold_seconds: float,
    ) -> ChatReply | None:
        async with self.database.lock:
            self.database.check()
            record = self.database.live_key(user_id, key)
            if record is None:
                until = self.database.clock() + timedelta(seconds=hold_seconds)
                self.database.idempotency_keys[(user_id, key)] = _KeyRecord(request_hash, turn_id, None, until)
                return None
            if record.request_hash != request_hash:
                raise IdempotencyKeyReused()
            if record.reply is None:
                raise IdempotencyInProgress()
            return record.reply


class InMemoryConversationReader(_OverDatabase):
    """A ConversationReader over an InMemoryChatDatabase."""

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        self.database.check()
        return self.database.owned(user_id, conversation_id)

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[datetime, uuid.UUID] | None = None
    ) -> tuple[ConversationSummary, ...]:
        self.database.check()
        owned = sorted(
            (c for c in self.database.conversations.values() if c.user_id == user_id),
            key=lambda c: (c.updated_at, c.id),
            reverse=True,
        )
        if before is not None:
            owned = [c for c in owned if (c.updated_at, c.id) < before]
        return tuple(
            ConversationSummary(
                c.id,
                c.title,
                c.created_at,
                c.updated_at,
                self._preview(c.id),
                any(a.pending for a in self.database.approvals_of(c.id)),
            )
            for c in owned[: max(limit, 0)]
        )

    def _preview(self, conversation_id: uuid.UUID) -> str | None:
        for message in reversed(self.database.messages.get(conversation_id, [])):
            if message.role in (Role.USER, Role.ASSISTANT) and message.content:
                return message.content[:PREVIEW_LENGTH]
        return None

    async def list_messages(
        self, user_id: str, conversation_id: uuid.UUID, *, limit: int, after_seq: int = 0
    ) -> tuple[Message, ...]:
        self.database.check()
        self.database.owned(user_id, conversation_id)
        later = [m for m in self.database.messages.get(conversation_id, []) if m.seq > after_seq]
        return tuple(later[: max(limit, 0)])


class InMemoryTurnNotifications(TurnWatches):
    """TurnNotifications in this process: an ``InMemoryTurnEventStore`` given it delivers every notice at once.

    ``listening = False`` makes its watches poll, as while a real listener reconnects; ``reconnected()`` is
    what a listener does when it is back.
    """

    def __init__(self, *, poll_seconds: float = 0.25) -> None:
        super().__init__(poll_seconds=poll_seconds, listening=lambda: self.connected)
        self.connected = True

    def reconnected(self) -> None:
        self.connected = True
        self.deliver_all(TurnNotice.CHECK)


class InMemoryTurnEventStore:
    """A TurnEventStore in dicts, over the InMemoryChatDatabase whose conversations own the turns.

    A deleted conversation's turns read as TurnNotFound, as they are cascaded away in a database.
    """

    def __init__(self, database: InMemoryChatDatabase, notifications: InMemoryTurnNotifications | None = None) -> None:
        self.database = database
        self.notifications = notifications
        self.turns: dict[uuid.UUID, TurnState] = {}
        self.events: dict[uuid.UUID, list[TurnEvent]] = {}
        self.ended_at: dict[uuid.UUID, datetime] = {}

    def _turn(self, user_id: str, turn_id: uuid.UUID) -> TurnState:
        self.database.check()
        turn = self.turns.get(turn_id)
        if turn is None or turn.user_id != user_id or turn.conversation_id not in self.database.conversations:
            raise TurnNotFound()
        return turn

    async def begin(
        self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, events: Sequence[TurnEvent] = ()
    ) -> TurnState:
        self.database.check()
        self.database.owned(user_id, conversation_id)
        if turn_id in self.turns:
            raise ValueError("turn already begun")
        _of_turn(turn_id, events)
        turn = TurnState(turn_id, conversation_id, user_id, TurnStatus.RUNNING, False, utcnow())
        self.turns[turn_id] = turn
        self.events[turn_id] = []
        self._add(user_id, events)
        return turn

    async def append(self, user_id: str, events: Sequence[TurnEvent]) -> None:
        self._add(user_id, events)

    def _add(self, user_id: str, events: Sequence[TurnEvent]) -> None:
        for event in events:
            self._turn(user_id, event.turn_id)
        known = {(e.turn_id, e.seq) for events_of_turn in self.events.values() for e in events_of_turn}
        keys = [(e.turn_id, e.seq) for e in events]
        if len(set(keys)) != len(keys) or known.intersection(keys):
            raise ValueError("duplicate event seq: nothing of this batch was stored")
        for event in events:
            self.events[event.turn_id].append(event)
        for turn_id in {event.turn_id for event in events}:
            self._notify(turn_id, TurnNotice.EVENTS)

    def _notify(self, turn_id: uuid.UUID, notice: TurnNotice) -> None:
        if self.notifications is not None:
            self.notifications.deliver(str(turn_id), notice)

    async def read(
        self, user_id: str, turn_id: uuid.UUID, *, after: int = 0, limit: int = 500
    ) -> tuple[TurnEvent, ...]:
        self._turn(user_id, turn_id)
        later = sorted((e for e in self.events[turn_id] if e.seq > after), key=lambda e: e.seq)
        return tuple(later[: max(limit, 0)])

    async def state(self, user_id: str, turn_id: uuid.UUID) -> TurnState:
        return self._turn(user_id, turn_id)

    async def end(self, user_id: str, turn_id: uuid.UUID, status: TurnStatus, events: Sequence[TurnEvent] = ()) -> None:
        turn = self._turn(user_id, turn_id)
        _of_turn(turn_id, events)
        self._add(user_id, events)
        self.turns[turn_id] = replace(turn, status=status)
        self.ended_at[turn_id] = utcnow()
        self._notify(turn_id, TurnNotice.EVENTS)

    async def request_stop(self, user_id: str, conversation_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        self.database.check()
        self.database.owned(user_id, conversation_id)
        stopped = [
            t.id for t in self.turns.values() if t.conversation_id == conversation_id and t.status is TurnStatus.RUNNING
        ]
        for turn_id in stopped:
            self.turns[turn_id] = replace(self.turns[turn_id], stop_requested=True)
            self._notify(turn_id, TurnNotice.STOP)
        return tuple(stopped)

    async def close_dead(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        quiet_before: datetime,
        error: Mapping[str, JsonValue],
    ) -> tuple[uuid.UUID, ...]:
        self.database.check()
        conversation = self.database.conversations.get(conversation_id)
        if conversation is None or conversation.user_id != user_id:
            return ()
        lease = self.database.leases.get(conversation_id)
        expired = lease is not None and lease.expires_at <= self.database.clock()
        closed: list[uuid.UUID] = []
        for turn in list(self.turns.values()):
            if turn.conversation_id != conversation_id or turn.status is not TurnStatus.RUNNING:
                continue
            if turn.created_at > quiet_before:
                continue
            if lease is not None and lease.owner == turn.id:
                dead = expired
            else:
                dead = lease is not None or conversation.updated_at <= quiet_before
            if dead:
                self._end_log(turn, error)
                closed.append(turn.id)
        if lease is not None and expired:
            del self.database.leases[conversation_id]
            stored = self.database.messages.get(conversation_id, [])
            mine = [m for m in stored if m.turn_id == lease.owner]
            answered = any(
                m.role is Role.ASSISTANT and not m.tool_calls and m.status is not MessageStatus.SUPERSEDED for m in mine
            )
            if not answered:
                for index, message in enumerate(stored):
                    mark = message.turn_id == lease.owner and message.role is Role.USER
                    if mark and message.status is MessageStatus.COMPLETE:
                        stored[index] = replace(message, status=MessageStatus.UNANSWERED)
            if lease.owner not in closed:
                closed.append(lease.owner)
        return tuple(closed)

    def _end_log(self, turn: TurnState, error: Mapping[str, JsonValue]) -> None:
        logged = self.events.setdefault(turn.id, [])
        last = logged[-1] if logged else None
        if last is not None and last.type == DONE:
            status = TurnStatus.INTERRUPTED if last.data.get("interrupted") else TurnStatus.COMPLETE
        elif last is not None and last.type == ERROR:
            status = TurnStatus.FAILED
        else:
            status = TurnStatus.INTERRUPTED
            data = {**error, "conversation_id": str(turn.conversation_id)}
            logged.append(TurnEvent(turn.id, (last.seq if last else 0) + 1, ERROR, data))
        self.turns[turn.id] = replace(turn, status=status)
        self.ended_at[turn.id] = utcnow()

    async def running(self, user_id: str, conversation_id: uuid.UUID) -> TurnState | None:
        self.database.check()
        lease = self.database.leases.get(conversation_id)
        if lease is None or lease.expires_at <= self.database.clock():
            return None
        turn = self.turns.get(lease.owner)
        if turn is None or turn.user_id != user_id or turn.status is not TurnStatus.RUNNING:
            return None
        return turn


def _of_turn(turn_id: uuid.UUID, events: Sequence[TurnEvent]) -> None:
    if any(event.turn_id != turn_id for event in events):
        raise ValueError("events of another turn")


class InMemoryRetentionStore:
    """A RetentionStore over the in-memory database and turn event store; its lock is this process's."""

    def __init__(self, database: InMemoryChatDatabase, events: InMemoryTurnEventStore) -> None:
        self.database = database
        self.events = events
        self.held = False

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        mine, self.held = not self.held, True
        try:
            yield mine
        finally:
            if mine:
                self.held = False

    def _ended_before(self, ended_before: datetime) -> list[uuid.UUID]:
        ended = self.events.ended_at
        return [
            turn_id
            for turn_id, turn in self.events.turns.items()
            if turn.status is not TurnStatus.RUNNING and ended.get(turn_id, turn.created_at) < ended_before
        ]

    async def delete_turn_events(self, *, ended_before: datetime, limit: int) -> int:
        self.database.check()
        deleted = 0
        for turn_id in self._ended_before(ended_before):
            logged = self.events.events.get(turn_id, [])
            taken = min(len(logged), limit - deleted)
            del logged[:taken]
            deleted += taken
        return deleted

    async def delete_turns(self, *, ended_before: datetime, limit: int) -> int:
        self.database.check()
        empty = [turn_id for turn_id in self._ended_before(ended_before) if not self.events.events.get(turn_id)]
        for turn_id in empty[: max(limit, 0)]:
            del self.events.turns[turn_id]
            self.events.events.pop(turn_id, None)
            self.events.ended_at.pop(turn_id, None)
        return len(empty[: max(limit, 0)])

    async def close_dead_turns(
        self, *, quiet_before: datetime, error: Mapping[str, JsonValue], limit: int
    ) -> tuple[uuid.UUID, ...]:
        self.database.check()
        now = self.database.clock()
        chosen: dict[uuid.UUID, str] = {}
        for turn in self.events.turns.values():
            if turn.status is TurnStatus.RUNNING and turn.created_at <= quiet_before:
                chosen.setdefault(turn.conversation_id, turn.user_id)
        for conversation_id, lease in self.database.leases.items():
            conversation = self.database.conversations.get(conversation_id)
            if lease.expires_at <= now and conversation is not None:
                chosen.setdefault(conversation_id, conversation.user_id)
        closed: list[uuid.UUID] = []
        for conversation_id, user_id in list(chosen.items())[: max(limit, 0)]:
            closed.extend(
                await self.events.close_dead(user_id, conversation_id, quiet_before=quiet_before, error=error)
            )
        return tuple(closed)

    async def delete_idempotency_keys(self, *, expired_by: datetime, limit: int) -> int:
        self.database.check()
        keys = self.database.idempotency_keys
        expired = [name for name, record in keys.items() if record.expires_at <= expired_by][: max(limit, 0)]
        for name in expired:
            del keys[name]
        return len(expired)


class InMemoryUsageStore:
    """A UsageStore over the calls the in-memory ConversationStore recorded with their turns
    (``InMemoryUsageStore(store.database)``)."""

    def __init__(self, database: InMemoryChatDatabase) -> None:
        self.database = database

    def _calls(self, user_id: str, start: datetime, end: datetime | None = None) -> list[RecordedCall]:
        self.database.check()
        return [
            r
            for r in self.database.usage
            if r.user_id == user_id and r.call.started_at >= start and (end is None or r.call.started_at < end)
        ]

    async def tokens_since(self, user_id: str, since: datetime) -> int:
        return sum(r.call.tokens for r in self._calls(user_id, since))

    async def totals(
        self, user_id: str, start: datetime, end: datetime, grouping: UsageGrouping
    ) -> tuple[UsageTotals, tuple[UsageGroup, ...]]:
        by_key: dict[str | None, list[RecordedCall]] = {}
        for r in sorted(self._calls(user_id, start, end), key=lambda r: r.call.started_at):
            by_key.setdefault(_group_key(r, grouping), []).append(r)
        keys = list(by_key) if grouping is UsageGrouping.CONVERSATION else sorted(by_key, key=lambda k: (k is None, k))
        groups = tuple(UsageGroup(key, UsageTotals.of(r.call for r in by_key[key])) for key in keys)
        return UsageTotals.sum(group.totals for group in groups), groups

    async def turn_totals(self, user_id: str, turn_id: uuid.UUID, since: datetime) -> UsageTotals:
        return UsageTotals.of(r.call for r in self._calls(user_id, since) if r.turn_id == turn_id)


def _group_key(record: RecordedCall, grouping: UsageGrouping) -> str | None:
    if grouping is UsageGrouping.MODEL:
        return record.call.model
    if grouping is UsageGrouping.CONVERSATION:
        return str(record.conversation_id)
    return record.call.started_at.astimezone(UTC).date().isoformat()


class StaticTokenVerifier:
    """Accepts exactly the tokens it was given; every other token is Unauthenticated."""

    def __init__(self, tokens: Mapping[str, Principal] | None = None) -> None:
        self.tokens: dict[str, Principal] = dict(tokens or {})

    def issue(self, user_id: str, email: str | None = None) -> str:
        token = f"token-{uuid.uuid4().hex}"
        self.tokens[token] = Principal(user_id=user_id, email=email)
        return token

    async def verify(self, token: str) -> Principal:
        try:
            return self.tokens[token]
        except KeyError:
            raise Unauthenticated("Invalid token") from None


ToolFunction = Callable[[Principal, Mapping[str, JsonValue]], Awaitable[JsonValue]]


@dataclass
class InMemoryToolRegistry:
    """A ToolRegistry of plain async functions; records every call it ran."""

    functions: dict[str, tuple[ToolSpec, ToolFunction]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, JsonValue]]] = field(default_factory=list)

    def register(self, spec: ToolSpec, function: ToolFunction) -> None:
        self.functions[spec.name] = (spec, function)

    async def list_tools(self) -> Sequence[ToolSpec]:
        return [spec for spec, _ in self.functions.values()]

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        if name not in self.functions:
            raise ToolError(f"Unknown tool: {name}")
        self.calls.append((principal.user_id, name, dict(arguments)))
        _, function = self.functions[name]
        return await function(principal, arguments)


AgentFunction = Callable[[AgentRequest], AgentResponse | Awaitable[AgentResponse]]
AgentStreamFunction = Callable[[AgentRequest], AsyncIterator[AgentStreamEvent]]


class FunctionAgent:
    """An LLMAgent driven by a function of the request, like pydantic-ai's FunctionModel.

    ``function`` answers a step at once; ``stream`` then cuts its response into pieces. ``stream_function``
    is the streaming hook (pydantic-ai's ``stream_function``): an async generator yielding the step's deltas
    and then its AgentResponse, passed on by ``stream`` as they come, so a test can script how a step
    streams (or fails halfway). With only a stream function, ``complete`` answers with its AgentResponse.
    A response without usage is reported as zero tokens (``Usage()``); one with usage keeps it.
    """

    provider = "function"

    def __init__(
        self, function: AgentFunction | None = None, *, stream_function: AgentStreamFunction | None = None
    ) -> None:
        if function is None and stream_function is None:
            raise ValueError("FunctionAgent needs a function, a stream_function or both")
        self.function = function
        self.stream_function = stream_function
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest) -> AgentResponse:
        if self.function is None:
            events = [event async for event in self.stream(request)]
            last = events[-1]
            assert isinstance(last, AgentResponse)  # stream() makes sure of it
            return last
        self.requests.append(request)
        outcome = self.function(request)
        return _reported(outcome if isinstance(outcome, AgentResponse) else await outcome)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """The stream function's items as they come; else the function's response, streamed word by word (text)
        and piece by piece (tool calls)."""
        if self.stream_function is None:
            for event in stream_of_response(await self.complete(request)):
                yield event
            return
        self.requests.append(request)
        answered = False
        async for event in self.stream_function(request):
            if answered:
                raise ValueError("a stream_function must yield exactly one AgentResponse, last")
            answered = isinstance(event, AgentResponse)
            yield _reported(event) if isinstance(event, AgentResponse) else event
        if not answered:
            raise ValueError("a stream_function must end with an AgentResponse")


class ScriptedAgent:
    """An LLMAgent that plays back responses (or raises errors) in order, then repeats the last one.

    A response without usage is reported as zero tokens (``Usage()``); one with usage keeps it.
    """

    provider = "scripted"

    def __init__(self, steps: Iterable[AgentResponse | AgentError]) -> None:
        self.steps = list(steps)
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest) -> AgentResponse:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, AgentError):
            raise step
        return _reported(step)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """The next scripted step, streamed word by word (text) and piece by piece (tool calls)."""
        for event in stream_of_response(await self.complete(request)):
            yield event


def _reported(response: AgentResponse) -> AgentResponse:
    """``response`` as an agent reports it: with zero-token usage when it came without any."""
    return response if response.usage is not None else replace(response, usage=Usage())


class InMemoryConversationAliases:
    """ConversationAliases over an InMemoryChatDatabase, whose deleted conversations take their ids along."""

    def __init__(self, database: InMemoryChatDatabase) -> None:
        self.database = database
        self.aliases: dict[tuple[str, str], uuid.UUID] = {}

    async def find(self, user_id: str, external_id: str) -> uuid.UUID | None:
        self.database.check()
        found = self.aliases.get((user_id, external_id))
        if found is not None and found not in self.database.conversations:
            del self.aliases[(user_id, external_id)]
            return None
        return found

    async def find_or_create(self, user_id: str, external_id: str, *, title: str | None) -> uuid.UUID:
        found = await self.find(user_id, external_id)
        if found is not None:
            return found
        now = utcnow()
        conversation = Conversation(uuid.uuid4(), user_id, title, now, now)
        self.database.conversations[conversation.id] = conversation
        self.database.messages[conversation.id] = []
        self.aliases[(user_id, external_id)] = conversation.id
        return conversation.id
