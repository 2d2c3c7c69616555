"""Streamed retries (chatcore.streamed_retries) on the in-memory fakes: an Idempotency-Key on a streamed turn.

A repeat follows the running turn or replays the finished one and never runs a second one; JSON and streamed
repeats answer each other's first request; a key reused for another request is refused before anything
streams; a reply whose events are gone is told as events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest

from chatcore.errors import IdempotencyKeyReused, InvalidMessage
from chatcore.fakes import (
    InMemoryConversationStore,
    InMemoryToolRegistry,
    InMemoryTurnEventStore,
    StaticTokenVerifier,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    JsonValue,
    Principal,
    Role,
    ToolCall,
    ToolSpec,
    TurnEvent,
)
from chatcore.service import ChatService
from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from chatcore.turn_events import done_data, stream_of_response
from tests.stores import claims_of, reader_of

ALICE = Principal("alice", "alice@example.com")
ADD_TASK = ToolSpec("add_task", "Add a task.", {"type": "object", "properties": {"title": {"type": "string"}}})
FAST = StreamPolicy(flush_seconds=0.0, poll_seconds=0.01, idle_seconds=5.0, shutdown_seconds=5.0)


class GatedAgent:
    """Asks for add_task, then streams its answer in words, stopping before the last until ``gate`` is set."""

    provider = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.steps = 0

    async def complete(self, request: AgentRequest) -> AgentResponse:
        return await self._respond(request)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        response = await self._respond(request, streamed=True)
        for event in stream_of_response(response):
            if isinstance(event, AgentResponse):
                self.waiting.set()
                await self.gate.wait()
            yield event

    async def _respond(self, request: AgentRequest, *, streamed: bool = False) -> AgentResponse:
        self.steps += 1
        if request.messages[-1].role is Role.USER:
            return AgentResponse("", (ToolCall(f"call_{uuid.uuid4().hex[:8]}", "add_task", {"title": "Buy milk"}),))
        if not streamed:
            self.waiting.set()
            await self.gate.wait()
        return AgentResponse("I have added Buy milk to your list.")


class World:
    def __init__(self) -> None:
        self.store = InMemoryConversationStore()
        self.events = InMemoryTurnEventStore(self.store.database)
        self.agent = GatedAgent()
        self.tasks: list[str] = []
        tools = InMemoryToolRegistry()
        tools.register(ADD_TASK, self.add_task)
        self.service = ChatService(
            store=self.store,
            claims=claims_of(self.store),
            agent=self.agent,
            verifier=StaticTokenVerifier(),
            tools=tools,
        )
        self.streamer = TurnStreamer(self.service, self.events, policy=FAST)

    async def add_task(self, _: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        self.tasks.append(str(arguments["title"]))
        return {"task_id": len(self.tasks), "title": arguments["title"]}

    async def stream(self, key: str, message: str = "Add milk", after: int = 0) -> AsyncIterator[TurnEvent]:
        return await self.streamer.start(ALICE, message, idempotency_key=key, after=after)


async def drain(events: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    async with asyncio.timeout(5):
        return [event async for event in events]


def wire(events: list[TurnEvent]) -> list[tuple[int, str, Mapping[str, JsonValue]]]:
    """What a client reads of each event: its id, name and data."""
    return [(event.seq, event.type, event.data) for event in events]


async def test_a_repeat_while_the_first_runs_follows_its_turn_from_the_start_or_after_the_last_event_seen() -> None:
    w = World()
    first = asyncio.create_task(drain(await w.stream("k1")))
    await asyncio.wait_for(w.agent.waiting.wait(), 5)

    from_start = asyncio.create_task(drain(await w.stream("k1")))
    after_two = asyncio.create_task(drain(await w.stream("k1", after=2)))
    await asyncio.sleep(0.05)
    w.agent.gate.set()

    original = await first
    assert [e.type for e in original][:3] == ["turn", "tool_call", "tool_result"]
    assert original[-1].type == "done"
    assert wire(await from_start) == wire(original)
    assert wire(await after_two) == wire(original[2:])
    assert w.tasks == ["Buy milk"], "the tool ran once"
    assert w.agent.steps == 2, "one turn: two model steps"


async def test_a_repeat_after_the_first_finished_replays_its_stored_events() -> None:
    w = World()
    w.agent.gate.set()
    original = await drain(await w.stream("k1"))

    replayed = await drain(await w.stream("k1"))
    resumed = await drain(await w.stream("k1", after=len(original) - 1))

    assert wire(replayed) == wire(original)
    assert wire(resumed) == wire(original[-1:])
    assert w.tasks == ["Buy milk"]
    assert w.agent.steps == 2


async def test_the_key_with_another_body_is_refused_before_anything_streams() -> None:
    w = World()
    w.agent.gate.set()
    await drain(await w.stream("k1"))

    with pytest.raises(IdempotencyKeyReused):
        await w.stream("k1", message="Add bread")
    with pytest.raises(InvalidMessage):
        await w.stream("\n")
    assert w.tasks == ["Buy milk"]


async def test_a_json_repeat_of_a_streamed_first_request_gets_its_reply_and_the_other_way_round() -> None:
    w = World()
    w.agent.gate.set()
    streamed = await drain(await w.stream("streamed"))
    json_repeat = await w.service.send(ALICE, "Add milk", idempotency_key="streamed")
    assert done_data(json_repeat, interrupted=False) == streamed[-1].data

    json_first = await w.service.send(ALICE, "Add milk", idempotency_key="json")
    told = await drain(await w.stream("json"))

    assert [e.type for e in told] == ["turn", "tool_call", "tool_result", "delta", "done"]
    assert [e.seq for e in told] == [1, 2, 3, 4, 5]
    assert told[-1].data == done_data(json_first, interrupted=False)
    assert told[0].data["message_id"] == str(json_first.message_id)
    history = await reader_of(w.store).list_messages("alice", json_first.conversation_id, limit=10)
    assert told[0].data["user_message_id"] == str(history[0].id)
    assert told[0].data["turn_id"] == str(history[0].turn_id)
    assert "".join(str(e.data["text"]) for e in told if e.type == "delta") == json_first.response
    assert len(w.tasks) == 2, "one task per request, none for the repeats"


async def test_a_streamed_repeat_of_a_json_first_request_that_still_runs_waits_for_its_reply() -> None:
    w = World()
    first = asyncio.create_task(w.service.send(ALICE, "Add milk", idempotency_key="k1"))
    await asyncio.wait_for(w.agent.waiting.wait(), 5)
    repeat = asyncio.create_task(drain(await w.stream("k1")))
    await asyncio.sleep(0.05)
    assert not repeat.done()

    w.agent.gate.set()
    reply = await first

    told = await repeat
    assert told[-1].data == done_data(reply, interrupted=False)
    assert w.tasks == ["Buy milk"]


async def test_when_the_events_are_gone_the_stored_reply_is_told_as_events() -> None:
    w = World()
    w.agent.gate.set()
    original = await drain(await w.stream("k1"))
    turn_id = uuid.UUID(str(original[0].data["turn_id"]))
    w.events.events[turn_id] = w.events.events[turn_id][3:]  # the janitor deleted some of them

    told = await drain(await w.stream("k1"))
    del w.events.turns[turn_id], w.events.events[turn_id]  # and then the rest, with the turn
    again = await drain(await w.stream("k1"))
    past_the_end = await drain(await w.stream("k1", after=len(original)))

    assert [e.type for e in told] == ["turn", "tool_call", "tool_result", "delta", "done"]
    assert told[0].data == original[0].data
    assert told[-1].data == original[-1].data
    assert wire(again) == wire(told)
    assert wire(past_the_end) == wire(told[-1:]), "at least the reply, whatever the client saw"
    assert w.tasks == ["Buy milk"]
