"""The history API's ports (ConversationReader: list, page; ConversationStore: rename, delete) on every backend."""

from __future__ import annotations

import uuid

import pytest

from chatcore.errors import ConversationNotFound
from chatcore.model import PREVIEW_LENGTH, ChatMessage, ToolCall, ToolResult, TurnStart
from chatcore.ports import ConversationReader, ConversationStore
from tests.stores import stored_conversation, stored_history


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def begin(
    store: ConversationStore, user: str, text: str = "hello", conversation_id: uuid.UUID | None = None
) -> TurnStart:
    return await store.begin_turn(
        user, conversation_id, ChatMessage.user(text), turn_id=uuid.uuid4(), history_limit=10, title=text[:20]
    )


async def answer(store: ConversationStore, user: str, conversation_id: uuid.UUID, *messages: ChatMessage) -> None:
    await store.finish_turn(user, conversation_id, list(messages), turn_id=uuid.uuid4())


async def test_conversations_are_listed_most_recently_active_first_with_keyset_pages(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    ids = [(await begin(store, alice, f"conversation {i}")).conversation.id for i in range(5)]
    await answer(store, alice, ids[1], ChatMessage.assistant("the oldest but one is active again"))

    first = await reader.list_conversations(alice, limit=2)
    last_seen = first[-1]
    second = await reader.list_conversations(alice, limit=2, before=(last_seen.updated_at, last_seen.id))
    third = await reader.list_conversations(alice, limit=2, before=(second[-1].updated_at, second[-1].id))
    listed = [*first, *second, *third]

    assert listed[0].id == ids[1]
    assert sorted(c.id for c in listed) == sorted(ids)
    assert [(c.updated_at, c.id) for c in listed] == sorted(((c.updated_at, c.id) for c in listed), reverse=True)
    assert len(third) == 1
    assert await reader.list_conversations(alice, limit=2, before=(third[-1].updated_at, third[-1].id)) == ()


async def test_a_listed_conversation_has_its_title_times_and_last_text_as_preview(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    start = await begin(store, alice, "Add milk")
    call = ToolCall("call_1", "add_task", {"title": "Milk"})
    long_reply = "Done! " + "x" * 500
    await answer(
        store,
        alice,
        start.conversation.id,
        ChatMessage.assistant("", [call]),
        ChatMessage.tool_result(call, ToolResult(result={"task_id": 1})),
        ChatMessage.assistant(long_reply),
    )

    [listed] = await reader.list_conversations(alice, limit=10)
    conversation = await stored_conversation(reader, alice, start.conversation.id)

    assert (listed.id, listed.title, listed.created_at) == (conversation.id, "Add milk", conversation.created_at)
    assert listed.updated_at == conversation.updated_at
    assert listed.preview == long_reply[:PREVIEW_LENGTH]


async def test_a_preview_skips_tool_results_and_empty_assistant_calls(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    start = await begin(store, alice, "List my tasks")
    call = ToolCall("call_1", "list_tasks", {})
    await answer(
        store,
        alice,
        start.conversation.id,
        ChatMessage.assistant("", [call]),
        ChatMessage.tool_result(call, ToolResult(result=[])),
    )

    [listed] = await reader.list_conversations(alice, limit=1)

    assert listed.preview == "List my tasks"


async def test_conversations_of_other_users_are_never_listed(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice, bob = new_user(), new_user()
    await begin(store, alice, "alice's")

    assert await reader.list_conversations(bob, limit=10) == ()
    assert [c.title for c in await reader.list_conversations(alice, limit=10)] == ["alice's"]


async def test_messages_are_paged_oldest_first_after_a_seq(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    start = await begin(store, alice, "one")
    await answer(store, alice, start.conversation.id, *(ChatMessage.assistant(f"reply {i}") for i in range(4)))

    first = await reader.list_messages(alice, start.conversation.id, limit=2)
    rest = await reader.list_messages(alice, start.conversation.id, limit=10, after_seq=first[-1].seq)

    assert [m.seq for m in first] == [1, 2]
    assert [m.content for m in (*first, *rest)] == ["one", "reply 0", "reply 1", "reply 2", "reply 3"]
    assert await reader.list_messages(alice, start.conversation.id, limit=10, after_seq=5) == ()
    assert (*first, *rest) == await stored_history(reader, alice, start.conversation.id, 10)


async def test_messages_of_another_users_conversation_are_not_found(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice, bob = new_user(), new_user()
    start = await begin(store, alice)

    with pytest.raises(ConversationNotFound):
        await reader.list_messages(bob, start.conversation.id, limit=10)
    with pytest.raises(ConversationNotFound):
        await reader.list_messages(alice, uuid.uuid4(), limit=10)


async def test_rename_changes_the_title_only(store: ConversationStore, reader: ConversationReader) -> None:
    alice = new_user()
    start = await begin(store, alice, "old title")
    before = await stored_conversation(reader, alice, start.conversation.id)

    renamed = await store.rename(alice, start.conversation.id, "New title")

    assert renamed.title == "New title"
    assert (renamed.id, renamed.created_at, renamed.updated_at) == (before.id, before.created_at, before.updated_at)
    assert await stored_conversation(reader, alice, start.conversation.id) == renamed


async def test_rename_and_delete_refuse_another_users_conversation(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice, bob = new_user(), new_user()
    start = await begin(store, alice, "mine")

    with pytest.raises(ConversationNotFound):
        await store.rename(bob, start.conversation.id, "stolen")
    with pytest.raises(ConversationNotFound):
        await store.delete(bob, start.conversation.id)
    assert (await stored_conversation(reader, alice, start.conversation.id)).title == "mine"


async def test_delete_removes_the_conversation_and_its_messages(
    store: ConversationStore, reader: ConversationReader
) -> None:
    alice = new_user()
    start = await begin(store, alice, "to delete")
    kept = await begin(store, alice, "to keep")
    await answer(store, alice, start.conversation.id, ChatMessage.assistant("bye"))

    await store.delete(alice, start.conversation.id)

    with pytest.raises(ConversationNotFound):
        await stored_conversation(reader, alice, start.conversation.id)
    with pytest.raises(ConversationNotFound):
        await reader.list_messages(alice, start.conversation.id, limit=10)
    with pytest.raises(ConversationNotFound):
        await store.delete(alice, start.conversation.id)
    assert [c.id for c in await reader.list_conversations(alice, limit=10)] == [kept.conversation.id]
