"""ChatService.regenerate with the in-memory adapters: the last reply again, the old one superseded."""

from __future__ import annotations

import uuid

import pytest

from chatcore import AgentResponse, AgentTimeout, ConversationNotFound, MessageStatus, Role, ToolCall
from chatcore.errors import NothingToRegenerate
from chatcore.fakes import InMemoryConversationAliases, InMemoryTurnEventStore, ScriptedAgent
from chatcore.model import Principal, TurnEvent
from chatcore.streamed_turns import TurnStreamer
from tests.stores import reader_of, stored_history
from tests.unit.test_service import build

ALICE = Principal("alice")


async def test_the_last_reply_is_generated_again_from_the_last_user_message() -> None:
    call = ToolCall("call_1", "echo", {"x": 7})
    agent = ScriptedAgent([AgentResponse("", (call,)), AgentResponse("First answer"), AgentResponse("Second answer")])
    service, store, _ = build(agent)
    first = await service.send(ALICE, "echo 7")

    again = await service.regenerate(ALICE, first.conversation_id)

    assert again.conversation_id == first.conversation_id
    assert again.response == "Second answer"
    assert again.message_id != first.message_id
    request = agent.requests[-1]
    assert [(m.role, m.content) for m in request.messages] == [(Role.USER, "echo 7")]  # no old reply in context
    stored = await stored_history(reader_of(store), "alice", first.conversation_id, 10)
    assert [(m.role, m.status) for m in stored] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.SUPERSEDED),
        (Role.TOOL, MessageStatus.SUPERSEDED),
        (Role.ASSISTANT, MessageStatus.SUPERSEDED),
        (Role.ASSISTANT, MessageStatus.COMPLETE),
    ]
    assert stored[-1].id == again.message_id


async def test_later_turns_never_see_a_superseded_reply() -> None:
    agent = ScriptedAgent([AgentResponse("Old"), AgentResponse("New"), AgentResponse("Next")])
    service, _, _ = build(agent)
    first = await service.send(ALICE, "one")
    await service.regenerate(ALICE, first.conversation_id)

    await service.send(ALICE, "two", first.conversation_id)

    assert [m.content for m in agent.requests[-1].messages] == ["one", "New", "two"]


async def test_a_failed_turn_can_be_answered_again() -> None:
    agent = ScriptedAgent([AgentTimeout(), AgentResponse("Here you go")])
    service, store, _ = build(agent)
    with pytest.raises(AgentTimeout) as failed:
        await service.send(ALICE, "hello")
    conversation_id = failed.value.conversation_id
    assert conversation_id is not None

    reply = await service.regenerate(ALICE, conversation_id)

    assert reply.response == "Here you go"
    stored = await stored_history(reader_of(store), "alice", conversation_id, 10)
    assert [(m.content, m.status) for m in stored] == [
        ("hello", MessageStatus.COMPLETE),
        ("Here you go", MessageStatus.COMPLETE),
    ]


async def test_nothing_to_regenerate_and_another_users_conversation_are_refused() -> None:
    service, store, _ = build(ScriptedAgent([AgentResponse("ok")]))
    empty = await InMemoryConversationAliases(store.database).find_or_create("alice", "chat", title=None)
    mine = await service.send(ALICE, "hi")

    with pytest.raises(NothingToRegenerate):
        await service.regenerate(ALICE, empty)
    with pytest.raises(ConversationNotFound):
        await service.regenerate(Principal("bob"), mine.conversation_id)
    with pytest.raises(ConversationNotFound):
        await service.regenerate(ALICE, uuid.uuid4())


async def test_a_streamed_regeneration_announces_its_reply_and_ends_with_it() -> None:
    service, store, _ = build(ScriptedAgent([AgentResponse("Old reply"), AgentResponse("New reply")]))
    first = await service.send(ALICE, "hi")
    streamer = TurnStreamer(service, InMemoryTurnEventStore(store.database))

    events: list[TurnEvent] = [event async for event in await streamer.regenerate(ALICE, first.conversation_id)]

    turn, *_, done = events
    assert (turn.type, done.type) == ("turn", "done")
    assert turn.data["message_id"] == done.data["message_id"]
    assert done.data["response"] == "New reply"
    stored = await stored_history(reader_of(store), "alice", first.conversation_id, 10)
    assert str(stored[-1].id) == done.data["message_id"]
    assert turn.data["user_message_id"] == str(stored[0].id)
