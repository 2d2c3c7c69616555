"""The ConversationAliases contract on every backend: in-memory, SQLite, PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatcore.errors import ConversationNotFound
from chatcore.model import ChatMessage
from tests.stores import ConversationStores, stored_history


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def test_the_first_use_creates_an_empty_titled_conversation_and_later_uses_find_it(
    stores: ConversationStores,
) -> None:
    alice = new_user()
    assert await stores.aliases.find(alice, "chat-1") is None

    created = await stores.aliases.find_or_create(alice, "chat-1", title="Buy milk")

    conversation = await stores.reader.get(alice, created)
    assert conversation.title == "Buy milk"
    assert await stored_history(stores.reader, alice, created, 10) == ()
    assert await stores.aliases.find(alice, "chat-1") == created
    assert await stores.aliases.find_or_create(alice, "chat-1", title="Another title") == created
    assert (await stores.reader.get(alice, created)).title == "Buy milk"


async def test_a_conversation_made_for_an_id_is_a_real_conversation(stores: ConversationStores) -> None:
    alice = new_user()
    conversation_id = await stores.aliases.find_or_create(alice, "chat-2", title=None)

    start = await stores.store.begin_turn(
        alice, conversation_id, ChatMessage.user("hello"), turn_id=uuid.uuid4(), history_limit=10
    )

    assert start.conversation.id == conversation_id
    assert start.user_message.seq == 1


async def test_the_same_id_of_two_users_names_two_conversations(stores: ConversationStores) -> None:
    alice, bob = new_user(), new_user()

    of_alice = await stores.aliases.find_or_create(alice, "shared-id", title=None)
    of_bob = await stores.aliases.find_or_create(bob, "shared-id", title=None)

    assert of_alice != of_bob
    with pytest.raises(ConversationNotFound):
        await stores.reader.get(bob, of_alice)
    assert await stores.aliases.find(bob, "unused-id") is None


async def test_deleting_the_conversation_forgets_the_id(stores: ConversationStores) -> None:
    alice = new_user()
    first = await stores.aliases.find_or_create(alice, "chat-3", title=None)

    await stores.store.delete(alice, first)

    assert await stores.aliases.find(alice, "chat-3") is None
    second = await stores.aliases.find_or_create(alice, "chat-3", title=None)
    assert second != first
    await stores.reader.get(alice, second)


async def test_concurrent_first_uses_get_one_conversation(stores: ConversationStores) -> None:
    alice = new_user()

    found = await asyncio.gather(*(stores.aliases.find_or_create(alice, "chat-4", title="t") for _ in range(6)))

    assert len(set(found)) == 1
    page = await stores.reader.list_conversations(alice, limit=10)
    assert [c.id for c in page] == [found[0]]
