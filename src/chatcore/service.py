"""ChatService: one chat turn, start to end, through the ports only."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from chatcore import history as history_rules
from chatcore.approvals import (
    EXPIRED,
    SUPERSEDED,
    approval_key,
    closing_result,
    needs_approval,
    turn_reply,
    unanswered_calls,
    validate_decisions,
)
from chatcore.errors import (
    AgentError,
    BudgetExhausted,
    ChatError,
    ConversationBusy,
    Forbidden,
    InvalidMessage,
    InvalidRequest,
    LeaseLost,
    StoreUnavailable,
    ToolError,
    TurnAbandoned,
    TurnStillOpen,
    Unauthenticated,
)
from chatcore.idempotency import as_replayed, request_fingerprint, validate_idempotency_key
from chatcore.model import (
    MAX_MESSAGE_LENGTH,
    MAX_USER_ID_LENGTH,
    AbandonedTurn,
    AgentRequest,
    AgentResponse,
    BusyPolicy,
    ChatMessage,
    ChatReply,
    JsonValue,
    Message,
    MessageStatus,
    Principal,
    ReplyStatus,
    Role,
    ToolApproval,
    ToolCall,
    ToolCallRecord,
    ToolDecision,
    ToolResult,
    TurnResumption,
    TurnStart,
    Usage,
    utcnow,
)
from chatcore.ports import (
    ConversationStore,
    LLMAgent,
    TokenVerifier,
    ToolRegistry,
    TurnClaimStore,
    TurnEventStore,
    UsageMeter,
    UsagePolicy,
    UsageStore,
)
from chatcore.turn_events import ErrorBody, TurnSink, TurnStopped, plain_error_body
from chatcore.turn_lease import Interrupt, TurnLease
from chatcore.usage import UNMETERED, ModelCall, Prices, UsageTotals

logger = logging.getLogger("chatcore.service")

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the tools you are given when they help to answer, "
    "and never invent what a tool would have told you. Answer briefly and in a friendly tone. "
    "The user is {name} ({email}). Today is {today}."
)
"""The prompt of a turn unless ``ChatPolicy.system_prompt`` says otherwise. A template: ``{email}``, ``{name}``,
``{user_id}`` and ``{today}`` are filled in per turn (``render_system_prompt``)."""

TITLE_LENGTH = 80
CLOSE_ATTEMPTS = 3
"""A new message closes the conversation's open turn, then begins; another open turn in between is not expected."""
CLOCK_MARGIN = timedelta(days=1)
"""How far before a turn's first message its calls are looked for: the store's clock stamps messages, the
service's the calls."""
PAIR_SLACK = 8
"""Extra history rows read so a window that would cut a tool pair can move back to the pair's start: a call
with up to 7 results. Results cut from a call with more are dropped instead (``history.window``); every row
read costs a turn about 10 µs (it is decoded, windowed and mapped), so the slack is kept small."""


@dataclass(frozen=True, slots=True)
class ChatPolicy:
    """The limits of a turn. Defaults suit a tool-using assistant on a hosted model."""

    history_limit: int = 50
    context_tokens: int | None = 24_000
    max_tool_steps: int = 8
    tool_timeout_seconds: float = 30.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    lease_seconds: float = 120.0
    """How long a turn holds its conversation (and its Idempotency-Key) between heartbeats' renewals."""
    turn_wait_seconds: float = 30.0
    """How long a turn waits for a busy conversation, or for a keyed twin still running, before 409."""
    idempotency_ttl_seconds: float = 86_400.0
    """How long a keyed reply is kept for retries."""
    approval_tools: frozenset[str] = frozenset()
    """Tools whose calls wait for the user's approval, besides those whose ToolSpec says ``requires_approval``."""
    approval_ttl_seconds: float = 86_400.0
    """Pending calls older than this are denied as expired the next time their conversation is touched."""
    max_turn_tokens: int | None = None
    """Input + output tokens after which a turn's tool loop stops (honestly, as when the user's budget runs out)."""
    busy_policy: BusyPolicy = BusyPolicy.WAIT
    """What a new message does while another turn holds its conversation, unless the request says (``if_busy``)."""


@dataclass(slots=True)
class _Progress:
    """A turn as it runs: where its steps are stored (as ``turn_id``'s, under ``holder``'s lease), what it stored,
    and what this request did, for the model's next step and the reply."""

    user_id: str
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    holder: uuid.UUID
    stored: list[Message] = field(default_factory=list)
    produced: list[ChatMessage] = field(default_factory=list)
    records: list[ToolCallRecord] = field(default_factory=list)
    pending: list[ToolCall] = field(default_factory=list)
    meter: UsageMeter = UNMETERED
    calls: list[ModelCall] = field(default_factory=list)
    """The model calls this request made, for the reply's ``usage``."""
    unstored: list[ModelCall] = field(default_factory=list)
    """Calls not stored yet: they go with the next write of the step they produced (``unrecorded``)."""

    async def store(
        self,
        store: ConversationStore,
        messages: Sequence[ChatMessage],
        *,
        approvals: Sequence[ToolApproval] = (),
        usage: Sequence[ModelCall] = (),
    ) -> None:
        self.stored.extend(
            await store.append_turn(
                self.user_id,
                self.conversation_id,
                messages,
                turn_id=self.turn_id,
                holder=self.holder,
                approvals=approvals,
                usage=usage,
            )
        )
        self.produced.extend(messages)

    def record(self, call: ModelCall) -> None:
        self.meter.record(call)
        self.calls.append(call)
        self.unstored.append(call)

    def unrecorded(self) -> list[ModelCall]:
        """The calls to store with the write being made now (taken: a failed write fails the turn)."""
        calls, self.unstored = self.unstored, []
        return calls

    @property
    def usage(self) -> UsageTotals:
        return UsageTotals.of(self.calls)

    def add_record(self, call: ToolCall, result: ToolResult, approval: ToolApproval | None) -> None:
        self.records.append(ToolCallRecord(call.id, call.name, call.arguments, result.result, result.error, approval))

    def reply(self, final: ChatMessage | None) -> ChatReply:
        """The reply of a turn that ran in this request: its answer, or (None) the calls it waits for."""
        if final is None:
            asked = next(m for m in reversed(self.produced) if m.role is Role.ASSISTANT)
            return ChatReply(
                self.conversation_id,
                asked.id,
                asked.content,
                tuple(self.records),
                ReplyStatus.AWAITING_APPROVAL,
                tuple(self.pending),
                usage=self.usage,
            )
        interrupted = isinstance(final, Message) and final.status is MessageStatus.INTERRUPTED
        status = ReplyStatus.INTERRUPTED if interrupted else ReplyStatus.COMPLETE
        return ChatReply(self.conversation_id, final.id, final.content, tuple(self.records), status, usage=self.usage)


def pending_approval(call: ToolCall, message_id: uuid.UUID, progress: _Progress) -> ToolApproval:
    """A call to store as pending; the store stamps when it was requested."""
    return ToolApproval(
        tool_call_id=call.id,
        name=call.name,
        arguments=call.arguments,
        conversation_id=progress.conversation_id,
        turn_id=progress.turn_id,
        message_id=message_id,
        requested_at=utcnow(),
    )


@dataclass(slots=True)
class _TurnLog:
    """What one turn did, for the structured log line: no message text, no credentials; the model tokens spent."""

    conversation_id: uuid.UUID | None = None
    model_seconds: float = 0.0
    model_calls: int = 0
    tools: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def fields(self, event: str, user_id: str, outcome: str, started: float) -> dict[str, object]:
        """The log line's fields; ``started`` is the ``time.perf_counter()`` when the request began."""
        return {
            "event": event,
            "user_id": user_id,
            "conversation_id": str(self.conversation_id) if self.conversation_id else None,
            "outcome": outcome,
            "turn_ms": round((time.perf_counter() - started) * 1000, 2),
            "model_ms": round(self.model_seconds * 1000, 2),
            "model_calls": self.model_calls,
            "tools": self.tools,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
        }


class _Metered:
    """``ChatService._metered`` as a plain async context manager (cheaper than a generator-based one on every turn)."""

    __slots__ = ("_given", "_opened", "_principal", "_service")

    def __init__(self, service: ChatService, principal: Principal, given: UsageMeter | None) -> None:
        self._service, self._principal, self._given = service, principal, given
        self._opened: UsageMeter | None = None

    async def __aenter__(self) -> UsageMeter:
        if self._given is not None:
            return self._given
        self._opened = await self._service.meter_for(self._principal)
        return self._opened

    async def __aexit__(self, *_: object) -> None:
        if self._opened is not None:
            self._opened.close()


def validate_message(message: str) -> str:
    """The user's text as it will be stored, or InvalidMessage saying what is wrong with it."""
    if not isinstance(message, str):
        raise InvalidMessage("message must be a string")
    if "\x00" in message:
        raise InvalidMessage("message must not contain NUL characters")
    if not message.strip():
        raise InvalidMessage("message must not be empty")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise InvalidMessage(f"message must be at most {MAX_MESSAGE_LENGTH} characters")
    return message


def parse_if_busy(value: object) -> BusyPolicy | None:
    """A request's ``if_busy`` as a policy (None when absent: the server's default), or InvalidRequest naming the
    choices."""
    if value is None:
        return None
    try:
        return BusyPolicy.parse(value)
    except ValueError as error:
        raise InvalidRequest(str(error)) from None


def title_from(message: str) -> str:
    first_line = " ".join(message.strip().split())
    if len(first_line) <= TITLE_LENGTH:
        return first_line
    return first_line[: TITLE_LENGTH - 1].rstrip() + "…"


def render_system_prompt(template: str, principal: Principal, now: datetime) -> str:
    values = {
        "email": principal.email or "not known",
        "user_id": principal.user_id,
        "name": principal.name or "not known",
        "today": now.date().isoformat(),
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        logger.warning("system prompt template has unknown placeholders; using it as written")
        return template


class ChatService:
    """Runs chat turns. Holds no state between turns: everything a turn needs comes from the store."""

    def __init__(
        self,
        *,
        store: ConversationStore,
        claims: TurnClaimStore,
        agent: LLMAgent,
        verifier: TokenVerifier,
        tools: ToolRegistry,
        policy: ChatPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        usage_policy: UsagePolicy | None = None,
        usage_store: UsageStore | None = None,
        prices: Prices | None = None,
        events: TurnEventStore | None = None,
        error_body: ErrorBody = plain_error_body,
    ) -> None:
        self.store = store
        self.claims = claims
        self.agent = agent
        self.verifier = verifier
        self.tools = tools
        self.policy = policy or ChatPolicy()
        self.clock = clock
        self.usage_policy = usage_policy
        self.usage_store = usage_store
        self.prices = prices or Prices()
        self.events = events
        """Streamed turns' logs, for closing the dead ones (``close_dead_turns``); None: no turn is streamed."""
        self.error_body = error_body
        """The ``error`` event's data that ends a dead turn's log (the HTTP app's has the status code)."""

    async def authenticate(self, bearer_token: str | None, path_user_id: str) -> Principal:
        """The principal of the token, who must be the user the path names."""
        if not bearer_token:
            raise Unauthenticated()
        principal = await self.verifier.verify(bearer_token)
        if not principal.user_id or len(principal.user_id) > MAX_USER_ID_LENGTH:
            raise Unauthenticated("Token subject is not a valid user id")
        if principal.user_id != path_user_id:
            raise Forbidden()
        return principal

    async def chat(
        self,
        bearer_token: str | None,
        path_user_id: str,
        message: str,
        conversation_id: uuid.UUID | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ChatReply:
        """One whole turn for a library user: authenticate, then send."""
        principal = await self.authenticate(bearer_token, path_user_id)
        return await self.send(principal, message, conversation_id, idempotency_key=idempotency_key)

    async def send(
        self,
        principal: Principal,
        message: str,
        conversation_id: uuid.UUID | None = None,
        *,
        sink: TurnSink | None = None,
        idempotency_key: str | None = None,
        meter: UsageMeter | None = None,
        if_busy: BusyPolicy | None = None,
        interrupt: Interrupt | None = None,
    ) -> ChatReply:
        """One turn for an authenticated principal; with a ``sink`` (see ``chatcore.streamed_turns``) it is streamed.

        With an ``idempotency_key``, a repeat of the same request returns the stored reply instead of running
        again (see ``chatcore.turn_lease``). Raises BudgetExhausted, storing nothing, when the principal's token
        budget is used up; ``meter`` is one the caller opened already (``meter_for``), closed here. ``if_busy``
        (default: the policy's ``busy_policy``) says what to do while another turn holds the conversation: wait for
        it, refuse (ConversationBusy at once), or stop it with ``interrupt`` (default: the stop flag in ``events``)
        and run right after it.
        """
        try:
            text = validate_message(message)
            key = None if idempotency_key is None else validate_idempotency_key(idempotency_key)
            log = _TurnLog(conversation_id=conversation_id)
            busy = self.policy.busy_policy if if_busy is None else if_busy
            if interrupt is None and self.events is not None:
                interrupt = self.events.request_stop
            return await self._logged(
                principal,
                log,
                lambda turn_id: self._run_held_turn(
                    principal,
                    text,
                    conversation_id,
                    turn_id,
                    log,
                    sink,
                    key,
                    meter,
                    self._lease(principal, turn_id, busy, interrupt),
                ),
            )
        finally:
            if meter is not None:
                meter.close()

    async def meter_for(self, principal: Principal) -> UsageMeter:
        """The meter of a turn of the principal's about to start (its ``UsagePolicy.begin``); raises BudgetExhausted
        when the user may not start one now. Without a policy: a meter that admits every call, at no cost."""
        if self.usage_policy is None:
            return UNMETERED
        return await self.usage_policy.begin(principal.user_id, self.clock())

    def _metered(self, principal: Principal, given: UsageMeter | None) -> _Metered:
        """The turn's meter: ``given`` (its opener closes it), else one opened now and closed when the turn ends."""
        return _Metered(self, principal, given)

    async def close_dead_turns(self, user_id: str, conversation_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        """Close the turns of the user's conversation whose server stopped (``TurnEventStore.close_dead``): each
        streamed one's log ends with an ``error`` event (TurnAbandoned), an expired lease is given back and the
        dead turn's user message marked unanswered. Whoever touches the conversation calls it (a follower, a GET);
        returns the ids of the turns closed."""
        if self.events is None:
            return ()
        closed = await self.events.close_dead(
            user_id,
            conversation_id,
            quiet_before=self.clock() - timedelta(seconds=self.policy.lease_seconds),
            error=self.error_body(TurnAbandoned()),
        )
        for turn_id in closed:
            logger.info(
                "dead turn closed",
                extra={"event": "turn_abandoned", "conversation_id": str(conversation_id), "turn_id": str(turn_id)},
            )
        return closed

    async def regenerate(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        *,
        sink: TurnSink | None = None,
        meter: UsageMeter | None = None,
    ) -> ChatReply:
        """The conversation's last reply generated again from its last user message, as a turn of its own.

        The previous reply (its assistant and tool messages) stays stored, marked SUPERSEDED: the history API
        shows it, the model never sees it again. Tools it called did run, and what they did is not undone; calls
        still waiting for approval are denied (superseded), as a new message denies them. Raises
        NothingToRegenerate when the conversation has no user message; BudgetExhausted like ``send``.
        """
        log = _TurnLog(conversation_id=conversation_id)

        async def regenerated(turn_id: uuid.UUID) -> ChatReply:
            async with self._metered(principal, meter) as metered, self._lease(principal, turn_id) as lease:
                start, _ = await self._begin_after_closing(
                    lease,
                    conversation_id,
                    lambda: lease.begin_regeneration(
                        conversation_id, history_limit=self.policy.history_limit + PAIR_SLACK
                    ),
                )
                return await self._answer(principal, start, turn_id, log, sink, lease=lease, meter=metered)

        try:
            return await self._logged(principal, log, regenerated)
        finally:
            if meter is not None:
                meter.close()

    async def _logged(
        self, principal: Principal, log: _TurnLog, turn: Callable[[uuid.UUID], Awaitable[ChatReply]]
    ) -> ChatReply:
        """Run ``turn`` under a new turn id, and write its ``chat_turn`` log line however it ends."""
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = await turn(uuid.uuid4())
            outcome = "ok"
            return reply
        except ChatError as error:
            outcome = type(error).__name__
            raise
        finally:
            logger.info("chat turn", extra=log.fields("chat_turn", principal.user_id, outcome, started))

    def _lease(
        self,
        principal: Principal,
        turn_id: uuid.UUID,
        if_busy: BusyPolicy = BusyPolicy.WAIT,
        interrupt: Interrupt | None = None,
    ) -> TurnLease:
        return TurnLease(
            self.store,
            self.claims,
            principal.user_id,
            turn_id,
            lease_seconds=self.policy.lease_seconds,
            wait_seconds=self.policy.turn_wait_seconds,
            idempotency_ttl_seconds=self.policy.idempotency_ttl_seconds,
            if_busy=if_busy,
            interrupt=interrupt,
        )

    async def _run_held_turn(
        self,
        principal: Principal,
        text: str,
        conversation_id: uuid.UUID | None,
        turn_id: uuid.UUID,
        log: _TurnLog,
        sink: TurnSink | None,
        idempotency_key: str | None,
        meter: UsageMeter | None,
        holds: TurnLease,
    ) -> ChatReply:
        """The turn under its ``holds``: the request's key claimed first (or its stored reply returned, whatever the
        budget says), then the usage meter opened, then the conversation's lease; the holds renewed while it runs
        and given back if it fails."""
        async with holds as lease:
            if idempotency_key is not None:
                fingerprint = request_fingerprint(principal.user_id, text, conversation_id)
                replay = await lease.claim(idempotency_key, fingerprint)
                if replay is not None:
                    log.conversation_id = replay.conversation_id
                    return replay
                if lease.taken_over is not None:
                    async with self._metered(principal, meter) as metered:
                        return await self._take_over(principal, lease.taken_over, lease, log, sink, metered)
            async with self._metered(principal, meter) as metered:
                start, closed_open_turn = await self._begin(lease, text, conversation_id)
                if not closed_open_turn:
                    await self._close_dead_predecessor(principal.user_id, start)
                return await self._answer(principal, start, turn_id, log, sink, lease=lease, meter=metered)

    async def _take_over(
        self,
        principal: Principal,
        abandoned: AbandonedTurn,
        lease: TurnLease,
        log: _TurnLog,
        sink: TurnSink | None,
        meter: UsageMeter,
    ) -> ChatReply:
        """A keyed retry of a turn whose server died: go on with that turn from what it stored, under this request's
        holds. Its finished calls keep their results (never run again), a call it was running gets ``interrupted:
        it may or may not have run``, and the model continues. If other turns followed it meanwhile, the retry gets
        the turn as it stands (interrupted), stored under the key."""
        conversation_id = log.conversation_id = abandoned.conversation_id
        resumed = await lease.resume(
            conversation_id, abandoned.turn_id, history_limit=self.policy.history_limit + PAIR_SLACK
        )
        logger.info(
            "turn taken over by a keyed retry",
            extra={
                "event": "turn_taken_over",
                "conversation_id": str(conversation_id),
                "turn_id": str(abandoned.turn_id),
            },
        )
        if not abandoned.last or not resumed.turn:
            reply = turn_reply(conversation_id, resumed.turn, resumed.approvals)
            await self.store.finish_turn(
                principal.user_id,
                conversation_id,
                (),
                turn_id=abandoned.turn_id,
                holder=lease.turn_id,
                idempotency=lease.completion(reply),
                keep_open=True,
            )
            lease.finished = True
            return reply
        reply_id = uuid.uuid4()
        if sink is not None:
            await sink.started(conversation_id, lease.turn_id, resumed.turn[0].id, reply_id)
        return await self._continue_turn(principal, resumed, lease, log, sink, reply_id, meter)

    async def _close_dead_predecessor(self, user_id: str, start: TurnStart) -> None:
        """The turn before this one stopped without an answer and nobody closed it (its server died): close it now,
        under this turn's lease: its user message marked unanswered, its event log ended (if it was streamed)."""
        dead = dead_turn_message(start.history)
        if dead is None:
            return
        await self.store.mark_unanswered(user_id, start.conversation.id, dead.id)
        await self.close_dead_turns(user_id, start.conversation.id)

    async def _answer(
        self,
        principal: Principal,
        start: TurnStart,
        turn_id: uuid.UUID,
        log: _TurnLog,
        sink: TurnSink | None,
        *,
        lease: TurnLease,
        meter: UsageMeter,
    ) -> ChatReply:
        """The reply to ``start.user_message``: the tool loop, each step stored as it happens, then the answer."""
        conversation = start.conversation
        log.conversation_id = conversation.id
        reply_id = uuid.uuid4()  # the final assistant message's, announced before it exists
        if sink is not None:
            await sink.started(conversation.id, turn_id, start.user_message.id, reply_id)
        past = history_rules.window(
            start.history, max_messages=self.policy.history_limit, max_tokens=self.policy.context_tokens
        )
        progress = _Progress(principal.user_id, conversation.id, turn_id, holder=turn_id, meter=meter)
        context = [*history_rules.for_model(past), start.user_message]
        try:
            final = await self._tool_loop(principal, progress, context, log, sink, reply_id=reply_id)
        except TurnStopped as stopped:
            final = interrupted_reply(stopped.partial_text, conversation.id)
        except AgentError as error:
            error.conversation_id = conversation.id
            await self._store_billed(progress)
            await self.store.mark_unanswered(principal.user_id, conversation.id, start.user_message.id)
            raise
        final = None if final is None else replace(final, id=reply_id)
        reply = progress.reply(final)
        if lease.idempotency_key is not None:
            reply = as_replayed(reply)  # the first answer, byte for byte what every retry will get
        await self.store.finish_turn(
            principal.user_id,
            conversation.id,
            () if final is None else (final,),
            turn_id=turn_id,
            idempotency=lease.completion(reply),
            keep_open=final is None,
            usage=progress.unrecorded(),
        )
        lease.finished = True
        return reply

    async def _store_billed(self, progress: _Progress) -> None:
        """Record the failed call the provider billed anyway (``AgentError.usage``) before the failure is reported;
        a failure to store it is logged, not raised over the model's error."""
        calls = progress.unrecorded()
        if not calls:
            return
        try:
            await progress.store(self.store, (), usage=calls)
        except ChatError as error:
            logger.warning(
                "could not record a failed model call's usage: %s",
                type(error).__name__,
                extra={"event": "usage_unrecorded", "turn_id": str(progress.turn_id)},
            )

    async def _begin(self, lease: TurnLease, text: str, conversation_id: uuid.UUID | None) -> tuple[TurnStart, bool]:
        """Store the user's message under the conversation's lease; a turn still open (its calls waiting for
        approval, or decided but not continued) is closed first: a new message supersedes it."""
        return await self._begin_after_closing(
            lease,
            conversation_id,
            lambda: lease.begin(
                conversation_id, text, history_limit=self.policy.history_limit + PAIR_SLACK, title=title_from(text)
            ),
        )

    async def _begin_after_closing(
        self, lease: TurnLease, conversation_id: uuid.UUID | None, begin: Callable[[], Awaitable[TurnStart]]
    ) -> tuple[TurnStart, bool]:
        """``begin`` a turn, closing first the conversation's open turn it finds in the way (True when it did)."""
        closed = False
        for _ in range(CLOSE_ATTEMPTS):
            try:
                return await begin(), closed
            except TurnStillOpen as still_open:
                assert conversation_id is not None  # a new conversation has no turn to close
                await self._close_open_turn(lease, conversation_id, still_open.turn_id)
                closed = True
        raise ConversationBusy()

    async def _close_open_turn(self, lease: TurnLease, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> None:
        """Give every call of the open turn its result — denied (superseded by a new message, or expired), not run,
        or interrupted — so the conversation can go on; under the lease the new turn then keeps."""
        user_id = lease.user_id
        resumed = await lease.resume(conversation_id, turn_id, history_limit=0)
        if not resumed.open:
            return
        await self.store.deny_pending(user_id, conversation_id, reason=EXPIRED, requested_before=self._expired_before())
        await self.store.deny_pending(user_id, conversation_id, reason=SUPERSEDED)
        asked = [m.id for m in resumed.turn if m.tool_calls]
        approvals = {
            approval_key(a): a for a in await self.store.list_approvals(user_id, conversation_id, message_ids=asked)
        }
        results = []
        for message, call in unanswered_calls(resumed.turn):
            result = closing_result(approvals.get((message.id, call.id)), superseded=True)
            assert result is not None  # closing a turn, every call gets one
            results.append(ChatMessage.tool_result(call, result))
        await self.store.append_turn(
            user_id, conversation_id, results, turn_id=turn_id, holder=lease.turn_id, close=True
        )
        logger.info(
            "open turn closed by a new message",
            extra={"event": "turn_superseded", "conversation_id": str(conversation_id), "turn_id": str(turn_id)},
        )

    def _expired_before(self) -> datetime:
        return self.clock() - timedelta(seconds=self.policy.approval_ttl_seconds)

    async def decide(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        decisions: Sequence[ToolDecision],
        *,
        sink: TurnSink | None = None,
        meter: UsageMeter | None = None,
    ) -> ChatReply:
        """Approve or deny tool calls waiting in the principal's conversation; the reply has ``send``'s shape.

        Approved calls run with the arguments the model gave (stored with the call, never taken from the
        decision); denied ones get a ``denied by the user`` result. While calls of the turn are still pending
        the decisions are stored and the reply says what still waits; once none is, the model continues the
        same turn under the conversation's lease and the reply is its answer. Deciding again what was decided
        runs nothing twice and returns that same reply. Raises ToolCallNotFound for a call that is not awaiting
        approval in the conversation, DecisionConflict for a call decided otherwise. Raises BudgetExhausted, storing
        no decision, when the principal's token budget is used up (``meter``: as ``send`` takes it).
        """
        try:
            checked = validate_decisions(decisions)
            log = _TurnLog(conversation_id=conversation_id)
            started = time.perf_counter()
            outcome = "error"
            try:
                async with self._metered(principal, meter) as metered:
                    reply = await self._decide(principal, conversation_id, checked, log, sink, metered)
                outcome = "ok"
                return reply
            except ChatError as error:
                outcome = type(error).__name__
                raise
            finally:
                fields = log.fields("tool_decisions", principal.user_id, outcome, started)
                fields.update(decisions=len(checked), approved=sum(1 for d in checked if d.approved))
                logger.info("tool decisions", extra=fields)
        finally:
            if meter is not None:
                meter.close()

    async def _decide(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        decisions: Sequence[ToolDecision],
        log: _TurnLog,
        sink: TurnSink | None,
        meter: UsageMeter,
    ) -> ChatReply:
        user_id = principal.user_id
        approvals = await self.store.decide_tool_calls(
            user_id, conversation_id, decisions, expire_before=self._expired_before()
        )
        turn_id, run_id, reply_id = approvals[0].turn_id, uuid.uuid4(), uuid.uuid4()
        if any(a.pending for a in approvals):
            turn = await self.store.turn_messages(user_id, conversation_id, turn_id)
            reply = replace(turn_reply(conversation_id, turn, approvals), usage=await self._turn_usage(user_id, turn))
            if sink is not None:
                await sink.started(conversation_id, run_id, turn[0].id, reply.message_id)
                for call in reply.pending_approvals:
                    await sink.approval_request(call)
            return reply
        async with self._lease(principal, run_id) as lease:
            resumed = await lease.resume(conversation_id, turn_id, history_limit=self.policy.history_limit + PAIR_SLACK)
            if not resumed.open or any(a.pending for a in resumed.approvals):
                # Continued already (a twin decision, another replica), or closed by a new message: its reply.
                reply = replace(
                    turn_reply(conversation_id, resumed.turn, resumed.approvals),
                    usage=await self._turn_usage(user_id, resumed.turn),
                )
                if sink is not None:
                    await sink.started(conversation_id, run_id, resumed.turn[0].id, reply.message_id)
                return reply
            if sink is not None:
                await sink.started(conversation_id, run_id, resumed.turn[0].id, reply_id)
            return await self._continue_turn(principal, resumed, lease, log, sink, reply_id, meter)

    async def _continue_turn(
        self,
        principal: Principal,
        resumed: TurnResumption,
        lease: TurnLease,
        log: _TurnLog,
        sink: TurnSink | None,
        reply_id: uuid.UUID,
        meter: UsageMeter,
    ) -> ChatReply:
        """The open turn's calls are all decided: run the approved ones, answer the rest, let the model go on."""
        conversation_id = resumed.conversation.id
        progress = _Progress(
            principal.user_id,
            conversation_id,
            resumed.turn_id,
            holder=lease.turn_id,
            stored=list(resumed.turn),
            meter=meter,
        )
        by_key = {approval_key(a): a for a in resumed.approvals}
        answers: list[ChatMessage] = []
        approved: list[ToolApproval] = []
        for message, call in unanswered_calls(resumed.turn):
            approval = by_key.get((message.id, call.id))
            result = closing_result(approval, superseded=False)
            if result is not None:
                answers.append(ChatMessage.tool_result(call, result))
                progress.add_record(call, result, approval)
            elif approval is not None:
                approved.append(approval)
        if answers:
            await progress.store(self.store, answers)
            if sink is not None:
                for record in progress.records:
                    await sink.tool_result(record)
        if approved:
            keys = [approval_key(a) for a in approved]
            if len(
                await self.store.start_tool_calls(principal.user_id, conversation_id, keys, holder=lease.turn_id)
            ) != len(keys):
                raise LeaseLost()  # under our lease no one else starts them: the lease was lost meanwhile
            if sink is not None:
                for approval in approved:
                    await sink.tool_call(approval.call)
            await self._run_calls(principal, progress, [(a.call, a) for a in approved], log, sink)
        past = history_rules.window(
            resumed.history, max_messages=self.policy.history_limit, max_tokens=self.policy.context_tokens
        )
        context = [*history_rules.for_model(past), *resumed.turn]
        try:
            final = await self._tool_loop(principal, progress, context, log, sink, reply_id=reply_id)
        except TurnStopped as stopped:
            final = interrupted_reply(stopped.partial_text, conversation_id)
        except AgentError as error:
            error.conversation_id = conversation_id
            await self._store_billed(progress)
            raise  # the turn stays open: deciding again (or a new message) takes it up
        final = None if final is None else replace(final, id=reply_id)
        answer = () if final is None else (final,)
        asked = [m.id for m in progress.stored if m.tool_calls]
        keyed = None
        if lease.idempotency_key is not None:  # a keyed retry took the turn up: its reply is stored with the turn
            approvals = await self.store.list_approvals(principal.user_id, conversation_id, message_ids=asked)
            keyed = replace(turn_reply(conversation_id, [*progress.stored, *answer], approvals), usage=progress.usage)
        finished = await self.store.finish_turn(
            principal.user_id,
            conversation_id,
            answer,
            turn_id=resumed.turn_id,
            holder=lease.turn_id,
            idempotency=None if keyed is None else lease.completion(keyed),
            keep_open=final is None,
            usage=progress.unrecorded(),
        )
        lease.finished = True
        if keyed is not None:
            return keyed
        approvals = await self.store.list_approvals(principal.user_id, conversation_id, message_ids=asked)
        turn = [*progress.stored, *finished]
        usage = await self._turn_usage(principal.user_id, turn, progress.usage)
        return replace(turn_reply(conversation_id, turn, approvals), usage=usage)

    async def _turn_usage(
        self, user_id: str, turn: Sequence[Message], otherwise: UsageTotals | None = None
    ) -> UsageTotals | None:
        """What a turn taken up after approvals reports: the usage of all its calls as recorded (the same for every
        reply of the turn, on any replica); ``otherwise`` without a UsageStore."""
        if self.usage_store is None or not turn or turn[0].turn_id is None:
            return otherwise
        since = turn[0].created_at - CLOCK_MARGIN
        return await self.usage_store.turn_totals(user_id, turn[0].turn_id, since)

    async def _tool_loop(
        self,
        principal: Principal,
        progress: _Progress,
        context: list[ChatMessage],
        log: _TurnLog,
        sink: TurnSink | None = None,
        *,
        reply_id: uuid.UUID | None = None,
    ) -> ChatMessage | None:
        """Ask the model, run the tools it asks for, feed the results back, until it answers or runs out of steps.

        Each step is stored as it happens: the model's calls before they run, each result as soon as its call
        returns. Calls that need the user's approval are stored as pending instead of run; the loop then ends
        after the step (None: the turn waits for decisions). That step's message is the reply the turn ends
        with, so it takes ``reply_id``, the id announced when the turn started (the ``turn`` event, the AI SDK's
        ``start``), as a final answer would.
        """
        specs = tuple(await self.tools.list_tools())
        by_name = {spec.name: spec for spec in specs}
        system_prompt = render_system_prompt(self.policy.system_prompt, principal, self.clock())
        for _ in range(self.policy.max_tool_steps):
            refusal = await self._refusal(progress)
            if refusal is not None:
                return ChatMessage.assistant(refusal)
            request = AgentRequest(system_prompt=system_prompt, messages=(*context, *progress.produced), tools=specs)
            response = await self._model_step(progress, request, log, sink)
            text, calls = without_nul(response.text), tuple(map(_clean_call, response.tool_calls))
            if not calls:
                return ChatMessage.assistant(text)
            asked = ChatMessage.assistant(text, calls)
            waiting = [needs_approval(call, by_name, self.policy.approval_tools) for call in calls]
            if any(waiting) and reply_id is not None:
                asked = replace(asked, id=reply_id)
            pending = [
                pending_approval(call, asked.id, progress) for call, wait in zip(calls, waiting, strict=True) if wait
            ]
            await progress.store(self.store, [asked], approvals=pending, usage=progress.unrecorded())
            if sink is not None:
                for call, wait in zip(calls, waiting, strict=True):
                    await (sink.approval_request(call) if wait else sink.tool_call(call))
            ready = [(call, None) for call, wait in zip(calls, waiting, strict=True) if not wait]
            await self._run_calls(principal, progress, ready, log, sink)
            if pending:
                progress.pending.extend(approval.call for approval in pending)
                return None
        return ChatMessage.assistant(
            f"I stopped after {self.policy.max_tool_steps} tool steps without finishing your request. "
            "Here is what I did so far; please tell me how you would like to continue."
            if progress.records
            else "I could not finish your request. Please try rephrasing it."
        )

    async def _model_step(
        self, progress: _Progress, request: AgentRequest, log: _TurnLog, sink: TurnSink | None
    ) -> AgentResponse:
        """One model call, recorded with what the provider reported it cost (a failed one too, when it was billed)."""
        started_at, began = self.clock(), time.perf_counter()
        usage: Usage | None = None
        model: str | None = None
        try:
            response = await (self.agent.complete(request) if sink is None else sink.step(self.agent, request))
            usage, model = response.usage or Usage(), response.model
            return response
        except AgentError as error:
            usage = error.usage
            raise
        finally:
            latency = time.perf_counter() - began
            log.model_seconds += latency
            log.model_calls += 1
            if usage is not None:
                log.input_tokens += usage.input_tokens
                log.output_tokens += usage.output_tokens
                log.cached_tokens += usage.cached_read_tokens
                cost = self.prices.cost(model, usage)
                progress.record(ModelCall(self.agent.provider, model, usage, started_at, latency, cost))

    async def _refusal(self, progress: _Progress) -> str | None:
        """Why the turn may not call the model again (its reply then says so), or None: the user's budget is used
        up (``UsagePolicy``), or the turn spent ``max_turn_tokens``. What the turn did so far stays stored."""
        try:
            await progress.meter.admit(self.clock())
        except BudgetExhausted as exhausted:
            logger.info(
                "turn stopped: token budget exhausted",
                extra={"event": "budget_exhausted", "turn_id": str(progress.turn_id)},
            )
            resets = "" if exhausted.resets_at is None else f" (it resets at {exhausted.resets_at.isoformat()})"
            return (
                f"I had to stop here: your token budget ran out{resets}. {_SO_FAR}"
                if progress.records
                else f"I cannot answer now: your token budget ran out{resets}."
            )
        limit = self.policy.max_turn_tokens
        if limit is not None and progress.usage.tokens >= limit:
            return f"I had to stop here: this turn used its limit of {limit} tokens. {_SO_FAR}"
        return None

    async def _run_calls(
        self,
        principal: Principal,
        progress: _Progress,
        calls: Sequence[tuple[ToolCall, ToolApproval | None]],
        log: _TurnLog,
        sink: TurnSink | None,
    ) -> None:
        """Run calls concurrently, each result stored as soon as its call returns; records in the calls' order."""

        async def run(call: ToolCall) -> ToolResult:
            result = await self._run_tool(principal, call)
            log.tools.append(call.name)
            await progress.store(self.store, [ChatMessage.tool_result(call, result)])
            if sink is not None:
                await sink.tool_result(ToolCallRecord(call.id, call.name, call.arguments, result.result, result.error))
            return result

        results = await asyncio.gather(*(run(call) for call, _ in calls))
        for (call, approval), result in zip(calls, results, strict=True):
            progress.add_record(call, result, approval)

    async def _run_tool(self, principal: Principal, call: ToolCall) -> ToolResult:
        """A tool's result, or an error result: a failing tool never fails the turn."""
        try:
            async with asyncio.timeout(self.policy.tool_timeout_seconds):
                return ToolResult(result=await self.tools.call(principal, call.name, call.arguments))
        except ToolError as error:
            return ToolResult(error=error.detail)
        except StoreUnavailable:
            raise  # the database is down: the turn cannot be stored either, so fail it as a whole (503)
        except TimeoutError:
            return ToolResult(error=f"tool {call.name} timed out after {self.policy.tool_timeout_seconds:g}s")
        except Exception:
            logger.exception("tool %s raised", call.name, extra={"event": "tool_error", "tool": call.name})
            return ToolResult(error=f"tool {call.name} failed unexpectedly")


_SO_FAR = "What I did so far is done and stored; please tell me how you would like to continue."


def dead_turn_message(history: Sequence[Message]) -> Message | None:
    """The user message of the last turn in ``history`` if that turn stopped without an answer and without being
    marked so: no assistant message without tool calls after it, the message still COMPLETE. Read under a new
    turn's lease (no other turn runs), that turn's server died (or it failed in a way that left it so)."""
    live = [m for m in history if m.status is not MessageStatus.SUPERSEDED]
    for index in range(len(live) - 1, -1, -1):
        message = live[index]
        if message.role is not Role.USER:
            continue
        if message.status is not MessageStatus.COMPLETE:
            return None
        answered = any(m.role is Role.ASSISTANT and not m.tool_calls for m in live[index + 1 :])
        return None if answered else message
    return None


def without_nul(value: JsonValue) -> JsonValue:
    """Model output with NUL characters replaced: PostgreSQL stores no NUL in text or JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


def interrupted_reply(partial_text: str, conversation_id: uuid.UUID) -> Message:
    """The reply a stopped turn stores: the text produced so far, marked INTERRUPTED for history and clients.

    A Message (not a ChatMessage) because stores take a batch message's status from it; the seq is theirs to give.
    """
    return Message(
        role=Role.ASSISTANT,
        content=without_nul(partial_text),
        conversation_id=conversation_id,
        seq=0,
        status=MessageStatus.INTERRUPTED,
    )


def _clean_call(call: ToolCall) -> ToolCall:
    return ToolCall(without_nul(call.id), without_nul(call.name), without_nul(dict(call.arguments)))
