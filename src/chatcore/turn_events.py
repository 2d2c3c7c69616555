"""The pieces a streamed turn is made of: agent deltas, the turn's event names, and the sink the tool loop feeds.

``ChatService`` runs the same tool loop for a streamed turn as for a JSON one; it only hands
the loop a ``TurnSink``, which asks the model for a streamed step, reports each piece as an
event, and ends the step early when the turn is asked to stop. What the turn stores is
decided by the service alone, so a streamed turn stores exactly what a JSON turn does.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Protocol

from chatcore.errors import ChatError
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatReply,
    JsonValue,
    ReplyStatus,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallRecord,
    TurnEvent,
    TurnNotice,
)
from chatcore.ports import LLMAgent
from chatcore.usage import UsageTotals

TURN: Final = "turn"
"""First event of a stream: ``{conversation_id, turn_id, user_message_id, message_id}``; ``message_id`` is the id
the turn's final assistant message will be stored under (the ``message_id`` of ``done``)."""
DELTA: Final = "delta"
"""A piece of the reply's text: ``{text}``."""
TOOL_CALL: Final = "tool_call"
"""A tool the model asked for, about to run: ``{id, name, arguments}``."""
APPROVAL_REQUEST: Final = "approval_request"
"""A tool call that waits for the user's approval instead of running: ``{id, name, arguments}`` (decide it at
``POST .../approvals``; the turn's ``done`` follows with ``status: awaiting_approval``)."""
TOOL_RESULT: Final = "tool_result"
"""What a tool returned: ``{id, name, result}`` or ``{id, name, error}``."""
DONE: Final = "done"
"""Last event of a finished turn: ``{conversation_id, message_id, response, tool_calls, interrupted, status,
pending_approvals}``, ``status`` and ``pending_approvals`` as in the JSON reply."""
ERROR: Final = "error"
"""Last event of a failed turn: ``{status_code, detail}`` as the JSON endpoint would answer, and ``conversation_id``."""
TERMINAL_EVENTS: Final = frozenset({DONE, ERROR})

ErrorBody = Callable[[BaseException], Mapping[str, JsonValue]]
"""An ``error`` event's data for an exception; the HTTP app's adds the status code the JSON reply would have."""


def plain_error_body(error: BaseException) -> dict[str, JsonValue]:
    """An error event's data without transport words; the HTTP app passes its own (with the status code)."""
    if isinstance(error, ChatError):
        return {"error": type(error).__name__, "detail": error.detail}
    return {"error": "InternalError", "detail": "Internal server error"}


_WORDS = re.compile(r"\s*\S+\s*|\s+")


class TurnStopped(Exception):
    """Raised inside the tool loop when a stop was requested (a signal, not an error); carries the text so far."""

    def __init__(self, partial_text: str = "") -> None:
        super().__init__("turn stopped")
        self.partial_text = partial_text


class TurnSink(Protocol):
    """What the tool loop reports to while a streamed turn runs (``streamed_turns.TurnRun`` implements it)."""

    async def started(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID, user_message_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        """The user message is stored: the turn now has a conversation and can be followed and stopped.

        ``message_id`` is the id the turn's final assistant message will be stored under.
        """
        ...

    async def step(self, agent: LLMAgent, request: AgentRequest) -> AgentResponse:
        """One model step, streamed to the client as it comes. Raises TurnStopped when a stop was requested."""
        ...

    async def tool_call(self, call: ToolCall) -> None:
        """A tool is about to run."""
        ...

    async def tool_result(self, record: ToolCallRecord) -> None:
        """A tool has returned (or failed, or was denied)."""
        ...

    async def approval_request(self, call: ToolCall) -> None:
        """A tool call waits for the user's approval instead of running."""
        ...


def stream_of_response(response: AgentResponse) -> Iterator[AgentStreamEvent]:
    """A whole response as a stream: its text word by word, each call's arguments in two pieces, then the response.

    For agents that compute a step at once (the offline agent, the fakes), so they stream like a provider does.
    """
    for word in words(response.text):
        yield TextDelta(word)
    for index, call in enumerate(response.tool_calls):
        arguments = json.dumps(dict(call.arguments), ensure_ascii=False)
        middle = len(arguments) // 2
        yield ToolCallDelta(index, id=call.id, name=call.name, arguments=arguments[:middle])
        yield ToolCallDelta(index, arguments=arguments[middle:])
    yield response


def words(text: str) -> list[str]:
    """``text`` in pieces of one word each, whitespace kept, so that joining the pieces gives ``text`` back."""
    return _WORDS.findall(text)


def tool_result_data(record: ToolCallRecord) -> dict[str, JsonValue]:
    """A tool_result event's data: the result, or the error, never both."""
    data: dict[str, JsonValue] = {"id": record.id, "name": record.name}
    if record.error is not None:
        data["error"] = record.error
    else:
        data["result"] = record.result
    return data


def tool_call_data(record: ToolCallRecord | ToolCall) -> dict[str, JsonValue]:
    return {"id": record.id, "name": record.name, "arguments": dict(record.arguments)}


def done_data(reply: ChatReply, *, interrupted: bool) -> dict[str, JsonValue]:
    """A done event's data: the reply's fields as the JSON endpoint answers them (``usage`` too), and whether the turn
    was stopped."""
    return {
        "conversation_id": str(reply.conversation_id),
        "message_id": str(reply.message_id),
        "response": reply.response,
        "tool_calls": [{**tool_call_data(record), **tool_result_data(record)} for record in reply.tool_calls],
        "interrupted": interrupted,
        "status": reply.status.value,
        "pending_approvals": [tool_call_data(call) for call in reply.pending_approvals],
        "usage": (reply.usage or UsageTotals()).to_json(),
    }


def reply_events(
    reply: ChatReply, *, turn_id: uuid.UUID | None, user_message_id: uuid.UUID | None
) -> tuple[TurnEvent, ...]:
    """A stored reply told as a streamed turn's events, numbered from 1: ``turn``, each tool call with its result,
    the calls waiting for approval, the text as one ``delta``, ``done``.

    For a reply whose own events are not stored (its request was a JSON one) or no longer are (deleted after
    CHATCORE_EVENT_RETENTION): the same kinds of events a client reads from a live turn, with the same ``done``.
    ``user_message_id`` (when known) and ``turn_id`` complete the ``turn`` event.
    """
    started: dict[str, JsonValue] = {"conversation_id": str(reply.conversation_id)}
    if turn_id is not None:
        started["turn_id"] = str(turn_id)
    if user_message_id is not None:
        started["user_message_id"] = str(user_message_id)
    started["message_id"] = str(reply.message_id)
    told: list[tuple[str, dict[str, JsonValue]]] = [(TURN, started)]
    for record in reply.tool_calls:
        told += [(TOOL_CALL, tool_call_data(record)), (TOOL_RESULT, tool_result_data(record))]
    told += [(APPROVAL_REQUEST, tool_call_data(call)) for call in reply.pending_approvals]
    if reply.response:
        told.append((DELTA, {"text": reply.response}))
    told.append((DONE, done_data(reply, interrupted=reply.status is ReplyStatus.INTERRUPTED)))
    number = turn_id or uuid.UUID(int=0)
    return tuple(TurnEvent(number, seq, kind, data) for seq, (kind, data) in enumerate(told, start=1))


class TurnWatches:
    """The open ``TurnWatch``es of this process by turn, which a ``TurnNotifications`` adapter delivers notices to.

    ``listening`` says whether notices are delivered now; while it is False a watch polls: ``wait`` returns
    ``{CHECK}`` every ``poll_seconds``. ``TurnWatches(listening=lambda: False)`` is how SQLite works.
    """

    def __init__(self, *, poll_seconds: float = 0.25, listening: Callable[[], bool] = lambda: True) -> None:
        self.poll_seconds = poll_seconds
        self.listening = listening
        self._by_turn: dict[str, set[_Watch]] = {}

    def watch(self, turn_id: uuid.UUID) -> _Watch:
        watch = _Watch(self, str(turn_id))
        self._by_turn.setdefault(watch.key, set()).add(watch)
        return watch

    def deliver(self, turn_id: str, notice: TurnNotice) -> None:
        """``notice`` to the watches of the turn whose id is ``turn_id`` (as ``str(uuid)`` writes it)."""
        for watch in self._by_turn.get(turn_id, ()):
            watch.notify(notice)

    def deliver_all(self, notice: TurnNotice) -> None:
        for watches in self._by_turn.values():
            for watch in watches:
                watch.notify(notice)

    def _forget(self, watch: _Watch) -> None:
        watches = self._by_turn.get(watch.key)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._by_turn[watch.key]


class _Watch:
    """A ``ports.TurnWatch``: the notices since the last ``wait``, and an event to wait on."""

    __slots__ = ("_owner", "_pending", "_ready", "key")

    def __init__(self, owner: TurnWatches, key: str) -> None:
        self._owner = owner
        self.key = key
        self._pending: set[TurnNotice] = set()
        self._ready = asyncio.Event()

    def notify(self, notice: TurnNotice) -> None:
        self._pending.add(notice)
        self._ready.set()

    async def wait(self, within: float | None = None) -> frozenset[TurnNotice]:
        if not self._pending:
            if not self._owner.listening():
                poll = self._owner.poll_seconds
                await asyncio.sleep(poll if within is None else min(poll, within))
                self._pending.add(TurnNotice.CHECK)
            else:
                try:
                    async with asyncio.timeout(within):
                        await self._ready.wait()
                except TimeoutError:
                    pass
        notices = frozenset(self._pending)
        self._pending.clear()
        self._ready.clear()
        return notices

    def close(self) -> None:
        self._owner._forget(self)
