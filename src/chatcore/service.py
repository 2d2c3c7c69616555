"""ChatService: one chat turn, start to end, through the ports only."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from chatcore import history as history_rules
from chatcore.errors import (
    AgentError,
    ChatError,
    Forbidden,
    InvalidMessage,
    StoreUnavailable,
    ToolError,
    Unauthenticated,
)
from chatcore.idempotency import as_replayed, request_fingerprint, validate_idempotency_key
from chatcore.model import (
    MAX_MESSAGE_LENGTH,
    MAX_USER_ID_LENGTH,
    AgentRequest,
    ChatMessage,
    ChatReply,
    JsonValue,
    Message,
    MessageStatus,
    Principal,
    Role,
    ToolCall,
    ToolCallRecord,
    ToolResult,
    ToolSpec,
    utcnow,
)
from chatcore.ports import ConversationStore, LLMAgent, TokenVerifier, ToolRegistry
from chatcore.turn_events import TurnSink, TurnStopped
from chatcore.turn_lease import TurnLease

logger = logging.getLogger("chatcore.service")

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the tools you are given when they help to answer, "
    "and never invent what a tool would have told you. Answer briefly and in a friendly tone. "
    "The user is {name} ({email}). Today is {today}."
)
"""The prompt of a turn unless ``ChatPolicy.system_prompt`` says otherwise. A template: ``{email}``, ``{name}``,
``{user_id}`` and ``{today}`` are filled in per turn (``render_system_prompt``)."""

TITLE_LENGTH = 80
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


@dataclass(slots=True)
class _TurnLog:
    """What one turn did, for the structured log line: no message text, no tokens."""

    conversation_id: uuid.UUID | None = None
    model_seconds: float = 0.0
    model_calls: int = 0
    tools: list[str] = field(default_factory=list)


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
        agent: LLMAgent,
        verifier: TokenVerifier,
        tools: ToolRegistry,
        policy: ChatPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.agent = agent
        self.verifier = verifier
        self.tools = tools
        self.policy = policy or ChatPolicy()
        self.clock = clock

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
    ) -> ChatReply:
        """One turn for an authenticated principal; with a ``sink`` (see ``chatcore.streamed_turns``) it is streamed.

        With an ``idempotency_key``, a repeat of the same request returns the stored reply instead of running
        again (see ``chatcore.turn_lease``).
        """
        text = validate_message(message)
        key = None if idempotency_key is None else validate_idempotency_key(idempotency_key)
        turn_id = uuid.uuid4()
        log = _TurnLog(conversation_id=conversation_id)
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = await self._run_held_turn(principal, text, conversation_id, turn_id, log, sink, key)
            outcome = "ok"
            return reply
        except ChatError as error:
            outcome = type(error).__name__
            raise
        finally:
            logger.info(
                "chat turn",
                extra={
                    "event": "chat_turn",
                    "user_id": principal.user_id,
                    "conversation_id": str(log.conversation_id) if log.conversation_id else None,
                    "outcome": outcome,
                    "turn_ms": round((time.perf_counter() - started) * 1000, 2),
                    "model_ms": round(log.model_seconds * 1000, 2),
                    "model_calls": log.model_calls,
                    "tools": log.tools,
                },
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
    ) -> ChatReply:
        """The turn under its holds: the request's key claimed first (or its stored reply returned), then the
        conversation's lease, both renewed while it runs and given back if it fails."""
        lease = TurnLease(
            self.store,
            principal.user_id,
            turn_id,
            lease_seconds=self.policy.lease_seconds,
            wait_seconds=self.policy.turn_wait_seconds,
            idempotency_ttl_seconds=self.policy.idempotency_ttl_seconds,
        )
        async with lease:
            if idempotency_key is not None:
                fingerprint = request_fingerprint(principal.user_id, text, conversation_id)
                replay = await lease.claim(idempotency_key, fingerprint)
                if replay is not None:
                    log.conversation_id = replay.conversation_id
                    return replay
            return await self._run_turn(principal, text, conversation_id, turn_id, log, sink, lease=lease)

    async def _run_turn(
        self,
        principal: Principal,
        text: str,
        conversation_id: uuid.UUID | None,
        turn_id: uuid.UUID,
        log: _TurnLog,
        sink: TurnSink | None = None,
        *,
        lease: TurnLease,
    ) -> ChatReply:
        start = await lease.begin(
            conversation_id, text, history_limit=self.policy.history_limit + PAIR_SLACK, title=title_from(text)
        )
        conversation = start.conversation
        log.conversation_id = conversation.id
        if sink is not None:
            await sink.started(conversation.id, turn_id, start.user_message.id)
        past = history_rules.window(
            start.history, max_messages=self.policy.history_limit, max_tokens=self.policy.context_tokens
        )
        context = [*history_rules.for_model(past), start.user_message]
        specs = tuple(await self.tools.list_tools())
        system_prompt = render_system_prompt(self.policy.system_prompt, principal, self.clock())

        produced: list[ChatMessage] = []
        records: list[ToolCallRecord] = []
        try:
            final = await self._tool_loop(principal, system_prompt, context, specs, produced, records, log, sink)
        except TurnStopped as stopped:
            final = interrupted_reply(stopped.partial_text, conversation.id)
        except AgentError as error:
            error.conversation_id = conversation.id
            if produced:
                await self.store.finish_turn(principal.user_id, conversation.id, produced, turn_id=turn_id)
            await self.store.mark_unanswered(principal.user_id, conversation.id, start.user_message.id)
            raise
        produced.append(final)
        reply = ChatReply(
            conversation_id=conversation.id,
            message_id=final.id,
            response=final.content,
            tool_calls=tuple(records),
        )
        if lease.idempotency_key is not None:
            reply = as_replayed(reply)  # the first answer, byte for byte what every retry will get
        await self.store.finish_turn(
            principal.user_id, conversation.id, produced, turn_id=turn_id, idempotency=lease.completion(reply)
        )
        lease.finished = True
        return reply

    async def _tool_loop(
        self,
        principal: Principal,
        system_prompt: str,
        context: list[ChatMessage],
        specs: tuple[ToolSpec, ...],
        produced: list[ChatMessage],
        records: list[ToolCallRecord],
        log: _TurnLog,
        sink: TurnSink | None = None,
    ) -> ChatMessage:
        """Ask the model, run the tools it asks for, feed the results back, until it answers or runs out of steps."""
        for _ in range(self.policy.max_tool_steps):
            request = AgentRequest(system_prompt=system_prompt, messages=(*context, *produced), tools=specs)
            began = time.perf_counter()
            try:
                response = await (self.agent.complete(request) if sink is None else sink.step(self.agent, request))
            finally:
                log.model_seconds += time.perf_counter() - began
                log.model_calls += 1
            text, calls = without_nul(response.text), tuple(map(_clean_call, response.tool_calls))
            if not calls:
                return ChatMessage.assistant(text)
            produced.append(ChatMessage.assistant(text, calls))
            if sink is not None:
                for call in calls:
                    await sink.tool_call(call)
            results = await asyncio.gather(*(self._run_tool(principal, call) for call in calls))
            for call, result in zip(calls, results, strict=True):
                log.tools.append(call.name)
                produced.append(ChatMessage.tool_result(call, result))
                records.append(
                    ToolCallRecord(
                        id=call.id, name=call.name, arguments=call.arguments, result=result.result, error=result.error
                    )
                )
                if sink is not None:
                    await sink.tool_result(records[-1])
        return ChatMessage.assistant(
            f"I stopped after {self.policy.max_tool_steps} tool steps without finishing your request. "
            "Here is what I did so far; please tell me how you would like to continue."
            if records
            else "I could not finish your request. Please try rephrasing it."
        )

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


def tool_records(messages: Sequence[ChatMessage]) -> list[ToolCallRecord]:
    """Pair stored assistant calls with their tool results, as the API reports them."""
    results = {m.tool_call_id: m for m in messages if m.role is Role.TOOL and m.tool_call_id}
    records: list[ToolCallRecord] = []
    for message in messages:
        for call in message.tool_calls:
            found = results.get(call.id)
            outcome = (
                ToolResult.from_content(found.content, is_error=found.is_error)
                if found
                else ToolResult(error="interrupted")
            )
            records.append(ToolCallRecord(call.id, call.name, call.arguments, outcome.result, outcome.error))
    return records
