"""The ports: everything ChatService needs from the outside world, as Protocols.

Each docstring is the port's contract; ``tests/contract`` runs the same suite
against every adapter of a port, the in-memory fakes included.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from chatcore.idempotency import IdempotencyRecord, IdempotentReply
from chatcore.model import (
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
    Principal,
    ToolApproval,
    ToolDecision,
    ToolSpec,
    TurnEvent,
    TurnNotice,
    TurnResumption,
    TurnStart,
    TurnState,
    TurnStatus,
)
from chatcore.usage import BudgetStatus, ModelCall, UsageGroup, UsageGrouping, UsageTotals


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal:
        """The principal a bearer token speaks for.

        Raises Unauthenticated for any token that is missing a claim, malformed, badly
        signed or expired, and AuthUnavailable when the token cannot be checked right now.
        """
        ...


class ToolApprovalStore(Protocol):
    """Tool calls that wait for the user's approval, in the same database as the messages. Scoped by ``user_id``.

    A call is pending until decided: by the user (``decide_tool_calls``), or denied because it expired or a
    new message arrived (``deny_pending``). Decisions need no lease (each is one atomic change); running an
    approved call does: ``start_tool_calls`` marks it started under the holder's lease, so it runs once.
    """

    async def decide_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        decisions: Sequence[ToolDecision],
        *,
        expire_before: datetime,
    ) -> tuple[ToolApproval, ...]:
        """In one transaction, all or nothing: deny the conversation's calls pending since before ``expire_before``
        (reason ``expired``), then store each decision on the call it names (the conversation's latest call with
        that id). A call already decided the same way is left as it was. Returns every approval of the turn the
        calls belong to, as they are now.

        Raises ConversationNotFound (an unknown or another user's conversation); ToolCallNotFound for an id the
        conversation has no approval for; DecisionConflict for a call decided otherwise, or decisions naming
        calls of different turns.
        """
        ...

    async def deny_pending(
        self, user_id: str, conversation_id: uuid.UUID, *, reason: str, requested_before: datetime | None = None
    ) -> None:
        """Deny the conversation's pending calls (only those requested before ``requested_before`` when given),
        with ``reason``. Another user's conversation has no calls of this user's: nothing changes."""
        ...

    async def start_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        calls: Sequence[tuple[uuid.UUID, str]],
        *,
        holder: uuid.UUID,
    ) -> tuple[tuple[uuid.UUID, str], ...]:
        """Mark approved calls (``(message_id, tool_call_id)``) started, those not started yet, while ``holder``
        holds the conversation's lease; returns the ones it marked, which the caller alone may run."""
        ...

    async def list_approvals(
        self, user_id: str, conversation_id: uuid.UUID, *, message_ids: Sequence[uuid.UUID] | None = None
    ) -> tuple[ToolApproval, ...]:
        """The conversation's approvals (of the calls of ``message_ids`` when given), oldest first.

        Raises ConversationNotFound like ``ConversationReader.get``."""
        ...


class ConversationStore(ToolApprovalStore, Protocol):
    """The writes of conversations and their messages: a turn's, its approvals', and the history API's. Every
    method is scoped by ``user_id``.

    A turn is two short transactions, ``begin_turn`` and ``finish_turn``, so no database connection is held
    while the model thinks. One turn at a time holds a conversation, across processes: ``begin_turn`` (or
    ``resume_turn``) takes the conversation's *lease* for the turn (owner ``turn_id``, an expiry) and
    ``finish_turn`` gives it back; a TurnClaimStore over the same database renews it while the turn runs, or
    releases it when the turn fails. A lease whose holder died (kill -9) simply expires. Expiries are judged by
    the store's clock.

    ``finish_turn`` also completes the turn's Idempotency-Key (claimed through the TurnClaimStore), because a
    keyed turn's reply must be committed in the same transaction as its messages: either a retry finds both
    or it finds neither.
    """

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
        """In one transaction: load the user's conversation (or create one when ``conversation_id`` is None,
        titled ``title``), read its last ``history_limit`` messages oldest first, and append ``message``.

        With ``lease_seconds`` the turn also takes the conversation's lease until then. Raises
        ConversationBusy, storing nothing, while another turn holds a lease that has not expired
        (with or without ``lease_seconds``: a turn never starts inside another's). Raises
        ConversationNotFound when the id is unknown or owned by another user. Raises TurnStillOpen,
        storing nothing, while the conversation has an open turn (``append_turn``): close it first.
        """
        ...

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
        """Store a running turn's messages as they happen, all or nothing, numbered after every message already
        stored and marked as turn ``turn_id``'s, while ``holder`` (the turn, or whoever took it up again) keeps
        the conversation's lease. ``usage``: the model calls that produced them (or a failed call the provider
        billed, with no messages), recorded as the user's and turn ``turn_id``'s in the same transaction.

        ``approvals`` (pending calls of these messages) are stored with them and make ``turn_id`` the
        conversation's *open turn*: no new turn begins until it is closed, by ``close`` here or by ``finish_turn``.
        Raises LeaseLost, storing nothing, when another holder has a live lease; ConversationNotFound like
        ``ConversationReader.get``.
        """
        ...

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
        """Append ``messages`` in order, all or nothing, numbered after every message already stored, and
        release the conversation's lease, held by ``holder`` (``turn_id`` when None); ``usage`` (the model calls
        not stored yet) is recorded in the same transaction, as ``append_turn`` records it.

        The conversation's open turn is closed unless ``keep_open`` (the turn ends waiting for approvals).
        With ``idempotency`` the key that ``holder`` claimed is completed with the reply, in the same
        transaction. Raises LeaseLost, storing nothing, when another turn holds a live lease on the
        conversation, or the key is no longer this turn's. Raises ConversationNotFound like ``ConversationReader.get``.
        """
        ...

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
        """Take the conversation's lease for ``holder`` and read turn ``turn_id`` back: whether it is the open
        turn, its messages and approvals, and the last ``history_limit`` messages before it, oldest first.

        Raises ConversationBusy, taking nothing, while another holder's lease is live; ConversationNotFound
        like ``ConversationReader.get``.
        """
        ...

    async def turn_messages(self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> tuple[Message, ...]:
        """Turn ``turn_id``'s messages, oldest first. Raises ConversationNotFound like ``ConversationReader.get``."""
        ...

    async def begin_regeneration(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        lease_seconds: float | None = None,
    ) -> TurnStart:
        """In one transaction: take the conversation's lease as ``begin_turn`` does (ConversationBusy,
        ConversationNotFound and TurnStillOpen alike), mark every message after the last user message SUPERSEDED,
        and return that user message (now ``turn_id``'s, and COMPLETE again if its turn had failed) with the last
        ``history_limit`` messages before it.

        Raises NothingToRegenerate, changing nothing, when the conversation has no user message.
        """
        ...

    async def mark_unanswered(self, user_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        """Flag a stored user message whose turn failed, so history shows it was never answered."""
        ...

    async def rename(self, user_id: str, conversation_id: uuid.UUID, title: str) -> Conversation:
        """Set the title (``updated_at`` is left alone: it orders by activity). Raises ConversationNotFound."""
        ...

    async def delete(self, user_id: str, conversation_id: uuid.UUID) -> None:
        """Remove the conversation with its messages and turn events. Raises ConversationNotFound."""
        ...

    async def ping(self) -> None:
        """Return when the store can serve requests; raise StoreUnavailable otherwise."""
        ...


class TurnClaimStore(Protocol):
    """What a running turn holds besides its messages: the conversation's lease (taken by ``begin_turn``) and the
    request's Idempotency-Key, both rows with an expiry that a heartbeat renews. Scoped by ``user_id``; expiries are
    judged by the store's clock. Over the same database as the ConversationStore whose leases and keys it renews.
    """

    async def claim_idempotency_key(
        self,
        user_id: str,
        key: str,
        request_hash: str,
        *,
        turn_id: uuid.UUID,
        hold_seconds: float,
    ) -> ChatReply | None:
        """Claim the user's ``key`` for ``turn_id`` for ``hold_seconds`` (None), or return the reply stored
        under it by an earlier request with the same ``request_hash``.

        Raises IdempotencyKeyReused when the key holds another request, IdempotencyInProgress while
        another turn's claim on it has not expired. A key whose claim or reply has expired is as good
        as new, and the store may delete expired keys at any time.
        """
        ...

    async def idempotency_record(self, user_id: str, key: str) -> IdempotencyRecord | None:
        """The user's ``key`` as it stands, read only: the request it holds, the turn that claimed it (kept after
        that turn stored its reply) and the reply once stored. None when absent or expired (another user's key is
        absent)."""
        ...

    async def abandoned_turn(self, user_id: str, key: str) -> AbandonedTurn | None:
        """The turn whose claim on the user's ``key`` expired while in progress (its server died), if it stored its
        user message; None when the key is absent, completed, still held, or its turn stored nothing."""
        ...

    async def renew_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
        lease_seconds: float,
    ) -> bool:
        """Extend the conversation's lease and the claim on ``idempotency_key`` that ``turn_id`` holds (even
        expired, as long as no other turn took them over) to ``lease_seconds`` from now.

        False when either given one is no longer ``turn_id``'s: the turn will not be able to finish.
        """
        ...

    async def release_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
    ) -> None:
        """Give back what a failed turn holds: the conversation's lease and its claim on ``idempotency_key``
        (so a retry with the key runs). Whatever ``turn_id`` does not hold is left alone.
        """
        ...


class ConversationReader(Protocol):
    """The read side of the history API: the user's conversations and their messages. Scoped by ``user_id``."""

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        """The user's conversation. Raises ConversationNotFound, also when another user owns it."""
        ...

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[datetime, uuid.UUID] | None = None
    ) -> tuple[ConversationSummary, ...]:
        """The user's conversations, most recently updated first (ties: higher id first), at most ``limit``.

        ``before`` is the (updated_at, id) of the last conversation of the previous page: only conversations
        strictly after it in that order are returned (keyset pagination). ``preview`` is the start (at most
        PREVIEW_LENGTH characters) of the newest user or assistant message with text.
        """
        ...

    async def list_messages(
        self, user_id: str, conversation_id: uuid.UUID, *, limit: int, after_seq: int = 0
    ) -> tuple[Message, ...]:
        """At most ``limit`` messages with ``seq > after_seq``, oldest first. Raises ConversationNotFound."""
        ...


class ToolRegistry(Protocol):
    """The tools a model may call. The caller binds every call to a principal; no tool takes a user argument."""

    async def list_tools(self) -> Sequence[ToolSpec]:
        """The tools, each name once (``[A-Za-z0-9_-]{1,64}``), each ``parameters`` an ``"object"`` JSON schema."""
        ...

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        """Run one tool for ``principal`` and return its JSON result.

        Raises ToolError for an unknown tool, arguments that are not an object or fail the tool's schema,
        a tool that failed or timed out, or a refusal the model should hear about (the toolset's own ToolError).
        """
        ...


class LLMAgent(Protocol):
    """One step of a model: given the conversation and tools, answer or ask for tool calls.

    Raises AgentUnavailable, AgentTimeout, AgentRateLimited or ContextTooLong; never a provider SDK's error.
    """

    provider: str

    async def complete(self, request: AgentRequest) -> AgentResponse: ...

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """The same step as ``complete``, as it is produced: TextDelta and ToolCallDelta pieces, then exactly one
        AgentResponse (the whole step, equal to what ``complete`` would return) as the last item.

        Raises the same errors as ``complete``, before or between items. Closing the iterator early
        (``aclose``) abandons the step and releases its connection.
        """
        ...


class TurnEventStore(Protocol):
    """The event log of streamed turns, in the same database as the messages, so any replica can replay a turn's
    events, follow it live, or ask it to stop. Every method is scoped by ``user_id``.
    """

    async def begin(
        self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, events: Sequence[TurnEvent] = ()
    ) -> TurnState:
        """Register a RUNNING turn of the user's conversation, with its first ``events`` (of this turn), all or
        nothing. Raises ConversationNotFound."""
        ...

    async def append(self, user_id: str, events: Sequence[TurnEvent]) -> None:
        """Store events of begun turns, all or nothing. Seqs are the writer's: one writer per turn, counting from 1."""
        ...

    async def read(
        self, user_id: str, turn_id: uuid.UUID, *, after: int = 0, limit: int = 500
    ) -> tuple[TurnEvent, ...]:
        """At most ``limit`` events with ``seq > after``, in order. Raises TurnNotFound (also for another user's)."""
        ...

    async def state(self, user_id: str, turn_id: uuid.UUID) -> TurnState:
        """The turn's status and stop flag. Raises TurnNotFound (also for another user's turn)."""
        ...

    async def end(self, user_id: str, turn_id: uuid.UUID, status: TurnStatus, events: Sequence[TurnEvent] = ()) -> None:
        """Record how the turn ended, with its last ``events`` (of this turn) stored at the same time, all or
        nothing; its events stay readable. Raises TurnNotFound (also for another user's turn)."""
        ...

    async def request_stop(self, user_id: str, conversation_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        """Flag every RUNNING turn of the conversation to stop; returns their ids (none: nothing was running).

        Raises ConversationNotFound when the conversation is unknown or another user's.
        """
        ...

    async def close_dead(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        quiet_before: datetime,
        error: Mapping[str, JsonValue],
    ) -> tuple[uuid.UUID, ...]:
        """Close what died in the user's conversation, in one transaction; returns the ids of the turns it closed
        (none for an unknown or another user's conversation).

        - A RUNNING turn begun at or before ``quiet_before`` is dead when the conversation's lease is its own but
          expired, or another's, or free since at or before ``quiet_before`` (the conversation's ``updated_at``):
          it is marked INTERRUPTED and its log ends with an ``error`` event of ``error``'s data (with the
          ``conversation_id``), unless it already ends with ``done`` or ``error`` (then it gets the status that
          event says: COMPLETE, INTERRUPTED or FAILED).
        - A lease that expired with its holder (a turn, JSON or streamed) is given back, and that turn's user
          message, if the turn has no answer (no assistant message without tool calls), is marked UNANSWERED.

        Expiries are judged by the store's clock. Pass a ``quiet_before`` a lease's length ago: a live turn renews
        its lease every third of it, and a turn that just gave its lease back ends its log within moments.
        """
        ...

    async def running(self, user_id: str, conversation_id: uuid.UUID) -> TurnState | None:
        """The conversation's running turn: the RUNNING turn that holds the conversation's lease (a turn whose
        replica died holds none once its lease expires). None when no turn runs, also for another user's
        conversation.
        """
        ...


class TurnWatch(Protocol):
    """The notices about one turn since the watch was opened (``TurnNotifications.watch``)."""

    async def wait(self, within: float | None = None) -> frozenset[TurnNotice]:
        """The notices that came since the last call, waiting for one if none did (empty after ``within`` seconds).

        Where notices are not delivered (SQLite, or while the listener reconnects) it returns ``{CHECK}`` every
        so often instead: the caller then reads the store, which is polling.
        """
        ...

    def close(self) -> None:
        """Stop receiving notices (idempotent)."""
        ...


class TurnNotifications(Protocol):
    """Wake-ups about streamed turns for whoever waits on them in this process, whichever replica wrote: a turn's
    events were stored (``TurnEventStore.append``/``end``), a stop was requested (``request_stop``).

    A notice only wakes a waiter, who then reads the TurnEventStore: a notice missed or repeated costs a read, never
    an event. Notices sent after ``watch`` returned reach the watch.
    """

    def watch(self, turn_id: uuid.UUID) -> TurnWatch:
        """Start receiving the notices about ``turn_id``; close the watch when done."""
        ...


class RetentionStore(Protocol):
    """What has expired, deleted in small batches (``chatcore.retention.Janitor``): across users, because it is
    maintenance, not a user's request. Never a running turn, never a conversation's messages.

    Each delete is one short transaction of at most ``limit`` rows, so a janitor never holds locks long;
    concurrent deletes (two processes) are safe and share the work.
    """

    def exclusive(self) -> AbstractAsyncContextManager[bool]:
        """Hold the store's maintenance lock while inside: True for the one caller (in any process sharing the
        database) that has it, False for the others meanwhile. Released on exit, and when the holder dies."""
        ...

    async def delete_turn_events(self, *, ended_before: datetime, limit: int) -> int:
        """Delete at most ``limit`` events of turns that ended (any status but RUNNING) before ``ended_before``;
        the number deleted. A running turn's events are kept, however old."""
        ...

    async def delete_turns(self, *, ended_before: datetime, limit: int) -> int:
        """Delete at most ``limit`` turns that ended before ``ended_before`` and have no events left; the number
        deleted (their messages stay: they belong to the conversation)."""
        ...

    async def close_dead_turns(
        self, *, quiet_before: datetime, error: Mapping[str, JsonValue], limit: int
    ) -> tuple[uuid.UUID, ...]:
        """``TurnEventStore.close_dead`` for at most ``limit`` conversations, of any user, that have a RUNNING turn
        begun at or before ``quiet_before`` or a lease that expired with its holder; the ids of the turns closed."""
        ...

    async def delete_idempotency_keys(self, *, expired_by: datetime, limit: int) -> int:
        """Delete at most ``limit`` Idempotency-Keys whose expiry is at or before ``expired_by``: replies past
        their TTL, and claims whose turn died. The number deleted."""
        ...


class UsageStore(Protocol):
    """The recorded model calls (``chatcore.usage.ModelCall``, one row each, written with the step of their turn
    by ``ConversationStore.append_turn``/``finish_turn``), read back per user: every method is scoped by ``user_id``."""

    async def tokens_since(self, user_id: str, since: datetime) -> int:
        """Input + output tokens of the user's calls that started at or after ``since`` (what a budget counts)."""
        ...

    async def totals(
        self, user_id: str, start: datetime, end: datetime, grouping: UsageGrouping
    ) -> tuple[UsageTotals, tuple[UsageGroup, ...]]:
        """The user's calls that started in [``start``, ``end``): their totals, and the totals of each day (UTC),
        conversation or model that has any, in that order (days and models ascending, conversations by first call).

        A total's ``cost_usd`` is None when any of its calls had no price.
        """
        ...

    async def turn_totals(self, user_id: str, turn_id: uuid.UUID, since: datetime) -> UsageTotals:
        """The totals of the user's calls of turn ``turn_id`` that started at or after ``since`` (a bound on the
        turn's start, so the read stays on the user's recent calls): what the replies of a turn taken up again
        after approvals report, alike on every replica."""
        ...


class UsageMeter(Protocol):
    """One turn's side of a ``UsagePolicy``: asked before each model call, told what each call cost."""

    async def admit(self, now: datetime) -> None:
        """Return when the turn may make its next model call; raise BudgetExhausted when it may not (the service
        then ends the turn honestly: what its tools did is stored and the reply says the budget ran out)."""
        ...

    def record(self, call: ModelCall) -> None:
        """What one of the turn's calls cost (also a failed call the provider billed)."""
        ...

    def close(self) -> None:
        """The turn is over and its calls are stored (or never will be). Called once, whatever happened."""
        ...


class UsagePolicy(Protocol):
    """Whether a user may spend tokens: consulted by ``ChatService`` as a turn starts and before each model call.

    ``chatcore.usage.StoredUsagePolicy`` is one budget for all, counted in a ``UsageStore``; a host backend plugs in
    its own plans and tiers here. ``begin`` is on the path of every turn: keep it cheap when there is nothing to check.
    """

    async def begin(self, user_id: str, now: datetime) -> UsageMeter:
        """Called once as a turn starts, before anything of it is stored. Raises BudgetExhausted when the user may
        not start a turn now (it is refused: HTTP 429 with ``Retry-After``)."""
        ...

    async def status(self, user_id: str, now: datetime) -> BudgetStatus | None:
        """The user's budget as of ``now`` (limit, used, when it resets), for the usage API; None without one."""
        ...


class ConversationAliases(Protocol):
    """Conversations named by a frontend's own chat ids (the AI SDK's chat id, an AG-UI thread id), per user.

    A mapping belongs to one user: the same external id of two users names two conversations. It goes
    when its conversation is deleted, and the next use of the id starts a new one.
    """

    async def find(self, user_id: str, external_id: str) -> uuid.UUID | None:
        """The conversation the user's ``external_id`` names, or None when it names none (yet)."""
        ...

    async def find_or_create(self, user_id: str, external_id: str, *, title: str | None) -> uuid.UUID:
        """The conversation the user's ``external_id`` names; on its first use, a new empty conversation
        titled ``title`` and the mapping, created together. Concurrent first uses get the same conversation.
        """
        ...
