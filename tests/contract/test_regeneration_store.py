"""``ConversationStore.begin_regeneration`` on every adapter: the last reply superseded, the lease taken."""

from __future__ import annotations

import uuid

import pytest

from chatcore.errors import ConversationBusy, ConversationNotFound, NothingToRegenerate
from chatcore.model import ChatMessage, MessageStatus, Role, ToolCall, ToolResult
from chatcore.ports import ConversationReader, ConversationStore, TurnClaimStore
from tests.stores import ConversationStores, stored_history


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def a_turn(store: ConversationStore, user: str, conversation_id: uuid.UUID | None, text: str) -> uuid.UUID:
    """A whole stored turn: the user's message, a tool call and its result, the final reply."""
    turn_id = uuid.uuid4()
    start = await store.begin_turn(user, conversation_id, ChatMessage.user(text), turn_id=turn_id, history_limit=50)
    call = ToolCall(f"call-{uuid.uuid4().hex[:8]}", "add_task", {"title": text})
    await store.finish_turn(
        user,
        start.conversation.id,
        [
            ChatMessage.assistant("", [call]),
            ChatMessage.tool_result(call, ToolResult(result={"task_id": 1})),
            ChatMessage.assistant(f"Added {text}."),
        ],
        turn_id=turn_id,
    )
    return start.conversation.id


async def test_the_last_reply_is_superseded_and_the_last_user_message_returned_with_the_history_before_it(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    conversation_id = await a_turn(store, alice, None, "milk")
    await a_turn(store, alice, conversation_id, "bread")

    start = await store.begin_regeneration(alice, conversation_id, turn_id=uuid.uuid4(), history_limit=50)

    assert (start.user_message.role, start.user_message.content, start.user_message.seq) == (Role.USER, "bread", 5)
    assert [m.seq for m in start.history] == [1, 2, 3, 4]
    assert not start.created
    assert start.conversation.id == conversation_id
    stored = await stored_history(reader, alice, conversation_id, 50)
    assert [m.status for m in stored] == [MessageStatus.COMPLETE] * 5 + [MessageStatus.SUPERSEDED] * 3
    limited = await store.begin_regeneration(alice, conversation_id, turn_id=uuid.uuid4(), history_limit=2)
    assert [m.seq for m in limited.history] == [3, 4]


async def test_a_failed_turns_user_message_is_answered_again_and_an_empty_reply_is_fine(
    store: ConversationStore, claims: TurnClaimStore, reader: ConversationReader
) -> None:
    alice = new_user()
    turn_id = uuid.uuid4()
    start = await store.begin_turn(alice, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10)
    await claims.release_turn(alice, turn_id, conversation_id=start.conversation.id, idempotency_key=None)
    await store.mark_unanswered(alice, start.conversation.id, start.user_message.id)

    again = await store.begin_regeneration(alice, start.conversation.id, turn_id=uuid.uuid4(), history_limit=10)

    assert again.user_message.id == start.user_message.id
    assert again.user_message.status is MessageStatus.COMPLETE
    assert [m.status for m in await stored_history(reader, alice, start.conversation.id, 10)] == [
        MessageStatus.COMPLETE
    ]
    assert again.history == ()


async def test_it_takes_the_lease_and_waits_for_no_one(store: ConversationStore, reader: ConversationReader) -> None:
    alice = new_user()
    conversation_id = await a_turn(store, alice, None, "milk")
    holder = uuid.uuid4()
    await store.begin_regeneration(alice, conversation_id, turn_id=holder, history_limit=10, lease_seconds=60)

    with pytest.raises(ConversationBusy):
        await store.begin_regeneration(alice, conversation_id, turn_id=uuid.uuid4(), history_limit=10)
    with pytest.raises(ConversationBusy):
        await store.begin_turn(
            alice, conversation_id, ChatMessage.user("x"), turn_id=uuid.uuid4(), history_limit=10, lease_seconds=60
        )
    await store.finish_turn(alice, conversation_id, [ChatMessage.assistant("Again.")], turn_id=holder)
    stored = await stored_history(reader, alice, conversation_id, 10)
    assert [(m.content, m.status) for m in stored[-2:]] == [
        ("Added milk.", MessageStatus.SUPERSEDED),
        ("Again.", MessageStatus.COMPLETE),
    ]


async def test_another_users_or_an_empty_conversation_is_refused_and_left_alone(stores: ConversationStores) -> None:
    store, reader, aliases = stores.store, stores.reader, stores.aliases
    alice, bob = new_user(), new_user()
    conversation_id = await a_turn(store, alice, None, "milk")

    with pytest.raises(ConversationNotFound):
        await store.begin_regeneration(bob, conversation_id, turn_id=uuid.uuid4(), history_limit=10)
    assert {m.status for m in await stored_history(reader, alice, conversation_id, 10)} == {MessageStatus.COMPLETE}

    empty = await aliases.find_or_create(alice, "empty", title=None)
    with pytest.raises(NothingToRegenerate):
        await store.begin_regeneration(alice, empty, turn_id=uuid.uuid4(), history_limit=10, lease_seconds=60)
    await store.begin_turn(  # the refusal took no lease
        alice, empty, ChatMessage.user("x"), turn_id=uuid.uuid4(), history_limit=10, lease_seconds=60
    )
