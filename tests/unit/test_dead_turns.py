"""Dead turns closed (chatcore.service.ChatService.close_dead_turns) on the in-memory fakes: by a follower on another
replica, by the next message, by the janitor; and what the next turn's model is told about a call that was running."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping

from chatcore.fakes import (
    InMemoryConversationStore,
    InMemoryRetentionStore,
    InMemoryToolRegistry,
    InMemoryTurnEventStore,
    ScriptedAgent,
    StaticTokenVerifier,
)
from chatcore.history import INTERRUPTED_ERROR
from chatcore.idempotency import request_fingerprint
from chatcore.model import (
    AgentResponse,
    ChatMessage,
    JsonValue,
    MessageStatus,
    Principal,
    ReplyStatus,
    Role,
    ToolCall,
    ToolResult,
    ToolSpec,
    TurnEvent,
    TurnStatus,
)
from chatcore.retention import Janitor, RetentionPolicy
from chatcore.service import ChatPolicy, ChatService
from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from tests.stores import ALL_MESSAGES, claims_of, reader_of, stored_history

ALICE = Principal("alice")
LEASE = 0.3
POLICY = StreamPolicy(
    flush_seconds=0.0, poll_seconds=0.01, idle_seconds=30.0, dead_after_seconds=0.05, dead_check_seconds=0.05
)
ADD_TASK = ToolSpec("add_task", "Add a task.", {"type": "object", "properties": {"title": {"type": "string"}}})


def service_of(store: InMemoryConversationStore, agent: ScriptedAgent, tools: InMemoryToolRegistry) -> ChatService:
    return ChatService(
        store=store,
        claims=claims_of(store),
        agent=agent,
        verifier=StaticTokenVerifier(),
        tools=tools,
        policy=ChatPolicy(lease_seconds=LEASE),
    )


def tools_recording(ran: list[str]) -> InMemoryToolRegistry:
    async def add_task(_: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        ran.append(str(arguments["title"]))
        return {"task_id": len(ran)}

    tools = InMemoryToolRegistry()
    tools.register(ADD_TASK, add_task)
    return tools


async def dead_turn(
    store: InMemoryConversationStore, events: InMemoryTurnEventStore, calls: tuple[ToolCall, ...] = ()
) -> tuple[uuid.UUID, uuid.UUID]:
    """What a replica killed mid-turn leaves: the user message, a step whose first call finished and whose others
    were running, a streamed log without an end, the lease left to expire. (conversation id, turn id)."""
    turn_id = uuid.uuid4()
    start = await store.begin_turn(
        "alice", None, ChatMessage.user("Add milk and bread"), turn_id=turn_id, history_limit=10, lease_seconds=LEASE
    )
    conversation_id = start.conversation.id
    if calls:
        asked = ChatMessage.assistant("", calls)
        finished = ChatMessage.tool_result(calls[0], _result({"task_id": 1}))
        await store.append_turn("alice", conversation_id, [asked], turn_id=turn_id, holder=turn_id)
        await store.append_turn("alice", conversation_id, [finished], turn_id=turn_id, holder=turn_id)
    await events.begin("alice", conversation_id, turn_id)
    await events.append("alice", [TurnEvent(turn_id, 1, "turn", {}), TurnEvent(turn_id, 2, "delta", {"text": "Ok"})])
    return conversation_id, turn_id


def _result(value: JsonValue) -> ToolResult:
    return ToolResult(result=value)


async def test_a_follower_on_another_replica_ends_with_the_error_event_once_the_lease_expires() -> None:
    store = InMemoryConversationStore()
    events = InMemoryTurnEventStore(store.database)
    conversation_id, turn_id = await dead_turn(store, events)
    other_replica = TurnStreamer(
        service_of(store, ScriptedAgent([AgentResponse("hi")]), InMemoryToolRegistry()), events, policy=POLICY
    )

    async with asyncio.timeout(5):
        followed = [e async for e in await other_replica.resume("alice", conversation_id, turn_id, after=1)]

    assert [e.type for e in followed] == ["delta", "error"]
    assert followed[-1].data == {
        "error": "TurnAbandoned",
        "detail": "the server handling this turn stopped",
        "conversation_id": str(conversation_id),
    }
    assert (await events.state("alice", turn_id)).status is TurnStatus.INTERRUPTED
    [message] = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert message.status is MessageStatus.UNANSWERED
    async with asyncio.timeout(5):  # a resume after the end replays it, ending at once
        assert [e.type for e in await _drain(other_replica, conversation_id, turn_id)] == ["turn", "delta", "error"]


async def _drain(streamer: TurnStreamer, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> list[TurnEvent]:
    return [e async for e in await streamer.resume("alice", conversation_id, turn_id)]


async def test_the_next_message_closes_the_dead_turn_and_never_runs_its_calls_again() -> None:
    store = InMemoryConversationStore()
    events = InMemoryTurnEventStore(store.database)
    milk, bread = (
        ToolCall("call_milk", "add_task", {"title": "Milk"}),
        ToolCall("call_bread", "add_task", {"title": "Bread"}),
    )
    conversation_id, turn_id = await dead_turn(store, events, (milk, bread))
    ran: list[str] = []
    agent = ScriptedAgent([AgentResponse("Milk was added; bread may or may not have been.")])
    service = service_of(store, agent, tools_recording(ran))
    TurnStreamer(service, events, policy=POLICY)
    await asyncio.sleep(LEASE * 1.5)

    reply = await service.send(ALICE, "Did it work?", conversation_id)

    assert ran == [], "no call of the dead turn ran again"
    assert reply.response.startswith("Milk was added")
    sent = agent.requests[0].messages
    results = {m.tool_call_id: m for m in sent if m.role is Role.TOOL}
    assert set(results) == {"call_milk", "call_bread"}, "every call paired with one result"
    assert json.loads(results["call_bread"].content) == {"error": INTERRUPTED_ERROR}
    assert results["call_bread"].is_error
    assert (await events.state("alice", turn_id)).status is TurnStatus.INTERRUPTED
    assert (await events.read("alice", turn_id))[-1].type == "error"
    stored = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert [(m.role, m.status) for m in stored if m.role is Role.USER] == [
        (Role.USER, MessageStatus.UNANSWERED),
        (Role.USER, MessageStatus.COMPLETE),
    ]


async def test_the_janitor_closes_a_dead_turn_nobody_touches() -> None:
    store = InMemoryConversationStore()
    events = InMemoryTurnEventStore(store.database)
    conversation_id, turn_id = await dead_turn(store, events)
    janitor = Janitor(InMemoryRetentionStore(store.database, events), RetentionPolicy(lease_seconds=LEASE))

    assert (await janitor.sweep()).dead_turns == 0, "not before its lease expired"
    await asyncio.sleep(LEASE * 1.5)
    swept = await janitor.sweep()

    assert swept.dead_turns == 1
    assert (await events.state("alice", turn_id)).status is TurnStatus.INTERRUPTED
    assert (await events.read("alice", turn_id))[-1].data["detail"] == "the server handling this turn stopped"
    [message] = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert message.status is MessageStatus.UNANSWERED


async def test_a_keyed_retry_goes_on_with_the_dead_turn_running_no_finished_call_again() -> None:
    store = InMemoryConversationStore()
    claims = claims_of(store)
    milk = ToolCall("call_milk", "add_task", {"title": "Milk"})
    bread = ToolCall("call_bread", "add_task", {"title": "Bread"})
    turn_id = uuid.uuid4()
    key, text = "retry-1", "Add milk and bread"
    await claims.claim_idempotency_key(
        "alice", key, request_fingerprint("alice", text, None), turn_id=turn_id, hold_seconds=LEASE
    )
    start = await store.begin_turn(
        "alice", None, ChatMessage.user(text), turn_id=turn_id, history_limit=10, lease_seconds=LEASE
    )
    conversation_id = start.conversation.id
    await store.append_turn(
        "alice", conversation_id, [ChatMessage.assistant("", (milk, bread))], turn_id=turn_id, holder=turn_id
    )
    await store.append_turn(
        "alice",
        conversation_id,
        [ChatMessage.tool_result(milk, _result({"task_id": 1}))],
        turn_id=turn_id,
        holder=turn_id,
    )
    ran: list[str] = []
    agent = ScriptedAgent([AgentResponse("Milk is on your list; bread may or may not be.")])
    service = service_of(store, agent, tools_recording(ran))
    await asyncio.sleep(LEASE * 1.5)  # the replica died: its holds expire

    reply = await service.send(ALICE, text, idempotency_key=key)
    again = await service.send(ALICE, text, idempotency_key=key)

    assert ran == [], "the finished call is not run again, nor the one that was running"
    assert reply == again
    assert (reply.conversation_id, reply.status) == (conversation_id, ReplyStatus.COMPLETE)
    assert [(c.id, c.error) for c in reply.tool_calls] == [("call_milk", None), ("call_bread", INTERRUPTED_ERROR)]
    assert len(agent.requests) == 1
    told = {m.tool_call_id: m.content for m in agent.requests[0].messages if m.role is Role.TOOL}
    assert json.loads(told["call_bread"]) == {"error": INTERRUPTED_ERROR}
    stored = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.ASSISTANT]
    assert {m.turn_id for m in stored} == {turn_id}, "one turn, taken up again, not a second one"
