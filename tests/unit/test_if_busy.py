"""A busy conversation (the chat body's ``if_busy``) on the in-memory fakes: wait, reject, interrupt."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from chatcore.entrypoints.container import chat_policy
from chatcore.entrypoints.settings import ConfigurationError, Settings
from chatcore.errors import ConversationBusy
from chatcore.fakes import (
    FunctionAgent,
    InMemoryConversationStore,
    InMemoryToolRegistry,
    InMemoryTurnEventStore,
    StaticTokenVerifier,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    BusyPolicy,
    MessageStatus,
    Principal,
    ReplyStatus,
    Role,
    TextDelta,
    TurnEvent,
)
from chatcore.service import ChatPolicy, ChatService
from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from tests.stores import ALL_MESSAGES, claims_of, reader_of, stored_history

ALICE = Principal("alice")
FAST = StreamPolicy(flush_seconds=0.0, poll_seconds=0.01, idle_seconds=30.0)
BOUND = 10.0
"""A test's bound: a turn that waits for the busy conversation instead would wait the policy's 60 s."""


class SlowThenQuick:
    """Streams its first reply one word every 20 ms, for ever (until stopped); answers later steps at once."""

    def __init__(self) -> None:
        self.requests: list[AgentRequest] = []
        self.streaming = asyncio.Event()

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        self.requests.append(request)
        if len(self.requests) > 1:
            yield AgentResponse("Right after it.")
            return
        while True:
            yield TextDelta("word ")
            self.streaming.set()
            await asyncio.sleep(0.02)


def world(
    busy_policy: BusyPolicy = BusyPolicy.WAIT,
) -> tuple[InMemoryConversationStore, ChatService, TurnStreamer, SlowThenQuick]:
    store = InMemoryConversationStore()
    slow = SlowThenQuick()
    service = ChatService(
        store=store,
        claims=claims_of(store),
        agent=FunctionAgent(stream_function=slow.stream),
        verifier=StaticTokenVerifier(),
        tools=InMemoryToolRegistry(),
        policy=ChatPolicy(turn_wait_seconds=60.0, busy_policy=busy_policy),
    )
    return store, service, TurnStreamer(service, InMemoryTurnEventStore(store.database), policy=FAST), slow


async def running_turn(streamer: TurnStreamer, slow: SlowThenQuick) -> tuple[uuid.UUID, AsyncIterator[TurnEvent]]:
    """A streamed turn streaming for ever: (its conversation, its events)."""
    events = await streamer.start(ALICE, "Tell me a long story")
    first = await anext(events)
    await slow.streaming.wait()
    return uuid.UUID(str(first.data["conversation_id"])), events


async def test_reject_answers_at_once_and_stores_nothing() -> None:
    store, service, streamer, slow = world()
    async with asyncio.timeout(BOUND):
        conversation_id, _ = await running_turn(streamer, slow)
        with pytest.raises(ConversationBusy) as refused:
            await service.send(ALICE, "Hello?", conversation_id, if_busy=BusyPolicy.REJECT)
        with pytest.raises(ConversationBusy):
            await streamer.start(ALICE, "Hello?", conversation_id, if_busy=BusyPolicy.REJECT)
        await streamer.stop("alice", conversation_id)
    assert refused.value.retry_after > 0
    assert "reject" in refused.value.detail
    stored = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert [m.content for m in stored if m.role is Role.USER] == ["Tell me a long story"]


async def test_the_servers_default_policy_applies_when_the_request_says_nothing() -> None:
    _, service, streamer, slow = world(BusyPolicy.REJECT)
    async with asyncio.timeout(BOUND):
        conversation_id, _ = await running_turn(streamer, slow)
        with pytest.raises(ConversationBusy):
            await service.send(ALICE, "Hello?", conversation_id)
        await streamer.stop("alice", conversation_id)


@pytest.mark.parametrize("streamed", [False, True])
async def test_interrupt_stops_the_running_turn_and_runs_right_after_it_seeing_it(streamed: bool) -> None:
    store, service, streamer, slow = world()
    async with asyncio.timeout(BOUND):
        conversation_id, first_events = await running_turn(streamer, slow)
        if streamed:
            events = await streamer.start(ALICE, "Stop, say hi", conversation_id, if_busy=BusyPolicy.INTERRUPT)
            done = [e async for e in events][-1]
            assert (done.type, done.data["response"]) == ("done", "Right after it.")
        else:
            reply = await service.send(
                ALICE, "Stop, say hi", conversation_id, if_busy=BusyPolicy.INTERRUPT, interrupt=streamer.stop
            )
            assert (reply.status, reply.response) == (ReplyStatus.COMPLETE, "Right after it.")
        first_done = [e async for e in first_events][-1]

    assert first_done.type == "done"
    assert first_done.data["interrupted"] is True
    assert str(first_done.data["response"]).startswith("word")
    stored = await stored_history(reader_of(store), "alice", conversation_id, ALL_MESSAGES)
    assert [(m.role, m.status) for m in stored] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.INTERRUPTED),
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.COMPLETE),
    ]
    seen = slow.requests[1].messages
    assert seen[-2].role is Role.ASSISTANT
    assert seen[-2].content.endswith("[reply interrupted]"), "the new turn sees the interrupted one"
    assert (seen[-1].role, seen[-1].content) == (Role.USER, "Stop, say hi")


async def test_wait_runs_after_the_running_turn_ends() -> None:
    _, service, streamer, slow = world()
    async with asyncio.timeout(BOUND):
        conversation_id, _ = await running_turn(streamer, slow)
        waiting = asyncio.create_task(service.send(ALICE, "After you", conversation_id, if_busy=BusyPolicy.WAIT))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "it waits while the turn runs"
        await streamer.stop("alice", conversation_id)
        reply = await waiting
    assert reply.response == "Right after it."


def test_an_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="if_busy must be one of wait, reject, interrupt"):
        BusyPolicy.parse("later")
    assert BusyPolicy.parse("interrupt") is BusyPolicy.INTERRUPT


@pytest.mark.parametrize(("text", "policy"), [("wait", "wait"), ("REJECT", "reject"), (" interrupt ", "interrupt")])
def test_chatcore_busy_policy_sets_the_default(text: str, policy: str) -> None:
    settings = Settings.from_env({"CHATCORE_BUSY_POLICY": text})
    assert chat_policy(settings).busy_policy is BusyPolicy(policy)


def test_the_default_busy_policy_is_wait_as_before() -> None:
    assert chat_policy(Settings.from_env({})).busy_policy is BusyPolicy.WAIT


def test_an_unknown_chatcore_busy_policy_fails_at_start_up_naming_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_BUSY_POLICY must be one of wait, reject, interrupt"):
        Settings.from_env({"CHATCORE_BUSY_POLICY": "queue"})
