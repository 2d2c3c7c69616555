"""Streamed turns (chatcore.streamed_turns) and the history service (chatcore.conversations) on the in-memory fakes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import pytest

from chatcore.adapters.anthropic.agent import _map_messages as anthropic_messages
from chatcore.adapters.offline.agent import OfflineTodoAgent
from chatcore.adapters.openai.agent import _map_messages as openai_messages
from chatcore.conversations import ConversationHistory
from chatcore.errors import AgentTimeout, InvalidMessage, InvalidRequest, TurnNotFound
from chatcore.fakes import (
    InMemoryConversationStore,
    InMemoryToolRegistry,
    InMemoryTurnEventStore,
    ScriptedAgent,
    StaticTokenVerifier,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    JsonValue,
    MessageStatus,
    Principal,
    Role,
    TextDelta,
    ToolCall,
    ToolSpec,
    TurnEvent,
    TurnState,
    TurnStatus,
)
from chatcore.service import ChatService
from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from chatcore.turn_events import stream_of_response, words
from tests.stores import claims_of, reader_of, stored_history

ALICE = Principal("alice", "alice@example.com")
ADD_TASK = ToolSpec("add_task", "Add a task.", {"type": "object", "properties": {"title": {"type": "string"}}})
MILK = ToolCall("call_milk", "add_task", {"title": "Buy milk"})
FAST = StreamPolicy(flush_seconds=0.0, poll_seconds=0.01, idle_seconds=5.0, shutdown_seconds=5.0)


async def add_task(_: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
    return {"task_id": 1, "title": arguments["title"]}


@dataclass
class World:
    store: InMemoryConversationStore
    events: InMemoryTurnEventStore
    service: ChatService
    streamer: TurnStreamer


def world(agent: object) -> World:
    store = InMemoryConversationStore()
    events = InMemoryTurnEventStore(store.database)
    tools = InMemoryToolRegistry()
    tools.register(ADD_TASK, add_task)
    service = ChatService(
        store=store, claims=claims_of(store), agent=agent, verifier=StaticTokenVerifier(), tools=tools
    )  # type: ignore[arg-type]
    return World(store, events, service, TurnStreamer(service, events, policy=FAST))


def milk_script() -> ScriptedAgent:
    return ScriptedAgent([AgentResponse("", (MILK,)), AgentResponse("I've added Buy milk.")])


async def drain(events: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    async with asyncio.timeout(5):
        return [event async for event in events]


class BlockingAgent:
    """Streams ``before`` word by word, then waits (until cancelled) for a release that never comes."""

    provider = "blocking"

    def __init__(self, before: str, then: list[AgentResponse] | None = None) -> None:
        self.before = before
        self.then = then or []
        self.requests: list[AgentRequest] = []
        self.blocked = asyncio.Event()

    async def complete(self, request: AgentRequest) -> AgentResponse:
        raise NotImplementedError

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        self.requests.append(request)
        if self.then:
            for event in stream_of_response(self.then.pop(0)):
                yield event
            return
        for word in words(self.before):
            yield TextDelta(word)
        self.blocked.set()
        await asyncio.Event().wait()


async def test_a_streamed_turn_emits_turn_tool_call_tool_result_deltas_and_done_in_order() -> None:
    w = world(milk_script())

    events = await drain(await w.streamer.start(ALICE, "Add milk"))

    assert [e.type for e in events] == ["turn", "tool_call", "tool_result", "delta", "delta", "delta", "delta", "done"]
    assert [e.seq for e in events] == list(range(1, 9))
    turn, call, result, *deltas, done = events
    conversation_id = turn.data["conversation_id"]
    assert call.data == {"id": "call_milk", "name": "add_task", "arguments": {"title": "Buy milk"}}
    assert result.data == {"id": "call_milk", "name": "add_task", "result": {"task_id": 1, "title": "Buy milk"}}
    assert "".join(str(d.data["text"]) for d in deltas) == "I've added Buy milk."
    stored = await stored_history(reader_of(w.store), "alice", uuid.UUID(str(conversation_id)), 10)
    assert done.data == {
        "conversation_id": conversation_id,
        "message_id": str(stored[-1].id),
        "response": "I've added Buy milk.",
        "tool_calls": [
            {"id": "call_milk", "name": "add_task", "arguments": {"title": "Buy milk"}, "result": result.data["result"]}
        ],
        "interrupted": False,
        "status": "complete",
        "pending_approvals": [],
        "usage": {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "model_calls": 2, "cost_usd": 0.0},
    }
    assert turn.data["user_message_id"] == str(stored[0].id)
    assert turn.data["message_id"] == done.data["message_id"]  # announced at the start


async def test_a_streamed_turn_stores_exactly_what_the_json_turn_stores() -> None:
    w = world(milk_script())
    reply = await w.service.send(ALICE, "Add milk")
    w.service.agent = milk_script()

    events = await drain(await w.streamer.start(ALICE, "Add milk"))

    def shape(conversation_id: uuid.UUID) -> list[tuple[object, ...]]:
        messages = w.store.database.messages[conversation_id]
        return [(m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.is_error, m.status) for m in messages]

    streamed_conversation = uuid.UUID(str(events[0].data["conversation_id"]))
    assert shape(streamed_conversation) == shape(reply.conversation_id)
    assert (
        w.store.database.conversations[streamed_conversation].title
        == w.store.database.conversations[reply.conversation_id].title
    )


async def test_the_event_log_holds_every_event_the_client_saw() -> None:
    w = world(milk_script())

    events = await drain(await w.streamer.start(ALICE, "Add milk"))

    turn_id = uuid.UUID(str(events[0].data["turn_id"]))
    assert list(await w.events.read("alice", turn_id)) == events
    assert (await w.events.state("alice", turn_id)).status is TurnStatus.COMPLETE


async def test_a_client_that_goes_away_does_not_stop_the_turn() -> None:
    w = world(milk_script())
    live = await w.streamer.start(ALICE, "Add milk")

    first = await anext(live)
    await live.aclose()  # type: ignore[attr-defined]
    await w.streamer.aclose()  # waits for the turn

    turn_id = uuid.UUID(str(first.data["turn_id"]))
    logged = await w.events.read("alice", turn_id)
    assert logged[-1].type == "done"
    conversation_id = uuid.UUID(str(first.data["conversation_id"]))
    assert [m.content for m in await stored_history(reader_of(w.store), "alice", conversation_id, 10)][
        -1
    ] == "I've added Buy milk."


async def test_resuming_gets_the_events_after_the_last_seen_one_and_only_for_the_owner() -> None:
    w = world(milk_script())
    events = await drain(await w.streamer.start(ALICE, "Add milk"))
    conversation_id = uuid.UUID(str(events[0].data["conversation_id"]))
    turn_id = uuid.UUID(str(events[0].data["turn_id"]))

    rest = await drain(await w.streamer.resume("alice", conversation_id, turn_id, after=3))

    assert rest == events[3:]
    with pytest.raises(TurnNotFound):
        await w.streamer.resume("bob", conversation_id, turn_id)
    with pytest.raises(TurnNotFound):
        await w.streamer.resume("alice", uuid.uuid4(), turn_id)


async def test_a_resume_on_another_replica_replays_from_the_log_then_follows_live() -> None:
    agent = BlockingAgent("Hello there")
    w = world(agent)
    other_replica = TurnStreamer(w.service, w.events, policy=FAST)
    live = await w.streamer.start(ALICE, "Say hello")
    first = await anext(live)
    async with asyncio.timeout(5):
        await agent.blocked.wait()
    conversation_id = uuid.UUID(str(first.data["conversation_id"]))
    turn_id = uuid.UUID(str(first.data["turn_id"]))
    resumed = await other_replica.resume("alice", conversation_id, turn_id, after=1)

    replayed = [await anext(resumed), await anext(resumed)]
    await other_replica.stop("alice", conversation_id)
    rest = await drain(resumed)

    assert [e.data.get("text") for e in replayed] == ["Hello ", "there"]
    assert [e.type for e in rest] == ["done"]
    assert rest[0].data["interrupted"] is True
    await live.aclose()  # type: ignore[attr-defined]


async def test_stop_keeps_the_partial_reply_as_interrupted_and_the_next_turn_is_valid_for_both_providers() -> None:
    agent = BlockingAgent("Let me think about", then=[])
    w = world(agent)
    live = await w.streamer.start(ALICE, "Plan my week")
    first = await anext(live)
    async with asyncio.timeout(5):
        await agent.blocked.wait()
    conversation_id = uuid.UUID(str(first.data["conversation_id"]))

    stopped = await w.streamer.stop("alice", conversation_id)
    rest = await drain(live)

    assert stopped == (uuid.UUID(str(first.data["turn_id"])),)
    done = rest[-1]
    assert (done.type, done.data["response"], done.data["interrupted"]) == ("done", "Let me think about", True)
    stored = await stored_history(reader_of(w.store), "alice", conversation_id, 10)
    assert [(m.role, m.content, m.status) for m in stored] == [
        (Role.USER, "Plan my week", MessageStatus.COMPLETE),
        (Role.ASSISTANT, "Let me think about", MessageStatus.INTERRUPTED),
    ]
    assert str(stored[-1].id) == done.data["message_id"]
    assert (await w.events.state("alice", uuid.UUID(str(first.data["turn_id"])))).status is TurnStatus.INTERRUPTED

    agent.then = [AgentResponse("Here is your plan.")]
    events = await drain(await w.streamer.start(ALICE, "Go on", conversation_id))

    assert events[-1].data["response"] == "Here is your plan."
    sent = agent.requests[-1].messages
    assert [m.role for m in sent] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert sent[1].content == "Let me think about\n[reply interrupted]"
    assert [m["role"] for m in anthropic_messages(sent)] == ["user", "assistant", "user"]
    assert [m["role"] for m in openai_messages("system", sent)] == ["system", "user", "assistant", "user"]


async def test_a_stop_between_tool_steps_keeps_every_tool_pair_complete() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_add(_: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        started.set()
        await release.wait()
        return {"task_id": 7}

    w = world(ScriptedAgent([AgentResponse("On it.", (MILK,)), AgentResponse("never said")]))
    w.service.tools.register(ADD_TASK, slow_add)  # type: ignore[attr-defined]
    live = await w.streamer.start(ALICE, "Add milk")
    first = await anext(live)
    async with asyncio.timeout(5):
        await started.wait()
    conversation_id = uuid.UUID(str(first.data["conversation_id"]))

    await w.streamer.stop("alice", conversation_id)
    release.set()
    rest = await drain(live)

    assert [e.type for e in rest][-2:] == ["tool_result", "done"]
    assert rest[-1].data["interrupted"] is True
    stored = await stored_history(reader_of(w.store), "alice", conversation_id, 10)
    assert [(m.role, m.status) for m in stored] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.COMPLETE),
        (Role.TOOL, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.INTERRUPTED),
    ]


async def test_a_model_failure_is_the_last_event_with_the_conversation_and_the_message_is_unanswered() -> None:
    w = world(ScriptedAgent([AgentTimeout(provider="scripted")]))

    events = await drain(await w.streamer.start(ALICE, "Add milk"))

    assert [e.type for e in events] == ["turn", "error"]
    error = events[-1].data
    assert (error["error"], error["detail"]) == ("AgentTimeout", "The model provider timed out")
    assert error["conversation_id"] == events[0].data["conversation_id"]
    stored = await stored_history(reader_of(w.store), "alice", uuid.UUID(str(error["conversation_id"])), 10)
    assert [m.status for m in stored] == [MessageStatus.UNANSWERED]
    turn_id = uuid.UUID(str(events[0].data["turn_id"]))
    assert (await w.events.state("alice", turn_id)).status is TurnStatus.FAILED


async def test_an_unknown_conversation_is_an_error_event_and_nothing_is_logged() -> None:
    w = world(milk_script())

    events = await drain(await w.streamer.start(ALICE, "hi", uuid.uuid4()))

    assert [(e.type, e.data["error"]) for e in events] == [("error", "ConversationNotFound")]
    assert w.events.turns == {}


async def test_a_bad_message_is_refused_before_anything_runs() -> None:
    w = world(milk_script())

    with pytest.raises(InvalidMessage):
        await w.streamer.start(ALICE, "   ")

    assert w.store.database.conversations == {}


async def test_the_offline_agent_streams_its_reply_word_by_word() -> None:
    agent = OfflineTodoAgent()
    request = AgentRequest("", (ChatMessage.user("hello"),), ())

    events = [event async for event in agent.stream(request)]

    whole = await agent.complete(request)
    assert events[-1] == whole
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) > 5
    assert "".join(texts) == whole.text


# --- the history service ---------------------------------------------------------------------------------------


async def test_conversation_pages_follow_their_cursors_to_the_end() -> None:
    w = world(ScriptedAgent([AgentResponse("ok")]))
    for i in range(5):
        await w.service.send(ALICE, f"conversation {i}")
    history = ConversationHistory(reader_of(w.store), w.store)

    seen: list[str | None] = []
    cursor: str | None = None
    for _ in range(10):
        page = await history.conversations("alice", limit=2, cursor=cursor)
        seen.extend(c.title for c in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == [f"conversation {i}" for i in reversed(range(5))]


async def test_a_message_page_folds_tool_results_into_their_calls_and_never_splits_a_pair() -> None:
    w = world(milk_script())
    reply = await w.service.send(ALICE, "Add milk")
    history = ConversationHistory(reader_of(w.store), w.store)

    first = await history.messages("alice", reply.conversation_id, limit=2)
    rest = await history.messages("alice", reply.conversation_id, limit=2, cursor=first.next_cursor)

    assert [(e.message.role, e.message.seq) for e in first.items] == [(Role.USER, 1), (Role.ASSISTANT, 2)]
    [record] = first.items[1].tool_calls
    assert (record.id, record.result) == ("call_milk", {"task_id": 1, "title": "Buy milk"})
    assert [e.message.content for e in rest.items] == ["I've added Buy milk."]
    assert rest.next_cursor is None


@pytest.mark.parametrize("cursor", ["not-base64!", "bTF8eA", "YzF8bm90LWEtZGF0ZXx4"])
async def test_a_cursor_this_api_did_not_make_is_invalid(cursor: str) -> None:
    empty = InMemoryConversationStore()
    history = ConversationHistory(reader_of(empty), empty)

    with pytest.raises(InvalidRequest):
        await history.messages("alice", uuid.uuid4(), cursor=cursor)
    with pytest.raises(InvalidRequest):
        await history.conversations("alice", cursor=cursor)


@pytest.mark.parametrize("title", ["", "   ", "x" * 201, "a\x00b"])
async def test_a_bad_title_is_invalid(title: str) -> None:
    w = world(ScriptedAgent([AgentResponse("ok")]))
    reply = await w.service.send(ALICE, "hi")

    with pytest.raises(InvalidRequest):
        await ConversationHistory(reader_of(w.store), w.store).rename("alice", reply.conversation_id, title)


async def test_a_title_is_stored_on_one_line() -> None:
    w = world(ScriptedAgent([AgentResponse("ok")]))
    reply = await w.service.send(ALICE, "hi")

    renamed = await ConversationHistory(reader_of(w.store), w.store).rename(
        "alice", reply.conversation_id, "  Weekly\n plan "
    )

    assert renamed.title == "Weekly plan"


# --- coalescing and batched writes ------------------------------------------------------------------------------


class PacedAgent:
    """Streams pieces with pauses between them: ``script`` is (seconds to wait, piece) pairs."""

    provider = "paced"

    def __init__(self, script: list[tuple[float, str]]) -> None:
        self.script = script

    async def complete(self, request: AgentRequest) -> AgentResponse:
        raise NotImplementedError

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        for pause, piece in self.script:
            if pause:
                await asyncio.sleep(pause)
            yield TextDelta(piece)
        yield AgentResponse("".join(piece for _, piece in self.script))


async def test_pieces_close_together_become_one_delta_and_a_piece_after_a_pause_goes_out_at_once() -> None:
    w = world(PacedAgent([(0, "Hel"), (0, "lo "), (0, "there"), (0.3, ", you"), (0, "!")]))
    w.streamer = TurnStreamer(
        w.service, w.events, policy=StreamPolicy(flush_seconds=0.1, first_pieces=0, idle_seconds=5.0)
    )

    events = await drain(await w.streamer.start(ALICE, "Say hello"))

    assert [(e.type, e.data.get("text")) for e in events][1:] == [
        ("delta", "Hel"),  # the first piece at once
        ("delta", "lo there"),  # the rest of that moment, one window later
        ("delta", ", you"),  # after a pause, at once again
        ("delta", "!"),
        ("done", None),
    ]
    turn_id = uuid.UUID(str(events[0].data["turn_id"]))
    assert list(await w.events.read("alice", turn_id)) == events


class CountingEventStore(InMemoryTurnEventStore):
    def __init__(self, events: InMemoryTurnEventStore) -> None:
        super().__init__(events.database)
        self.writes: list[tuple[str, int]] = []

    async def begin(
        self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, events: Sequence[TurnEvent] = ()
    ) -> TurnState:
        self.writes.append(("begin", len(events)))
        return await super().begin(user_id, conversation_id, turn_id, events)

    async def append(self, user_id: str, events: Sequence[TurnEvent]) -> None:
        self.writes.append(("append", len(events)))
        await super().append(user_id, events)

    async def end(self, user_id: str, turn_id: uuid.UUID, status: TurnStatus, events: Sequence[TurnEvent] = ()) -> None:
        self.writes.append(("end", len(events)))
        await super().end(user_id, turn_id, status, events)


async def test_the_first_pieces_go_out_one_by_one_then_pieces_close_together_are_grouped() -> None:
    pieces = [(0.0, f"w{i} ") for i in range(6)]
    w = world(PacedAgent(pieces))
    w.streamer = TurnStreamer(
        w.service, w.events, policy=StreamPolicy(flush_seconds=0.1, first_pieces=3, idle_seconds=5.0)
    )

    events = await drain(await w.streamer.start(ALICE, "Count"))

    assert [e.data["text"] for e in events if e.type == "delta"] == ["w0 ", "w1 ", "w2 ", "w3 w4 w5 "]


async def test_a_quick_turn_is_written_in_two_writes_its_start_and_its_end() -> None:
    w = world(milk_script())
    counting = CountingEventStore(w.events)
    streamer = TurnStreamer(w.service, counting, policy=StreamPolicy(flush_seconds=0.0, write_seconds=5.0))

    events = await drain(await streamer.start(ALICE, "Add milk"))

    assert counting.writes == [("begin", 1), ("end", len(events) - 1)]
    assert list(await counting.read("alice", uuid.UUID(str(events[0].data["turn_id"])))) == events
