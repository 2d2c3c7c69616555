"""The ConversationStore contract (with the reads it is checked by), on every backend of ``tests/contract/conftest.py``.

The SQL stores share one database per session, so every test works with fresh user ids.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcore.errors import ConversationNotFound, StoreUnavailable
from chatcore.model import (
    ChatMessage,
    Message,
    MessageStatus,
    Role,
    ToolCall,
    ToolResult,
    TurnStart,
)
from chatcore.ports import ConversationReader, ConversationStore
from tests.stores import stored_conversation, stored_history

pytestmark = pytest.mark.postgres_core


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.fixture
def alice() -> str:
    return new_user()


@pytest.fixture
def bob() -> str:
    return new_user()


async def begin(
    store: ConversationStore,
    user: str,
    conversation_id: uuid.UUID | None = None,
    text: str = "hello",
    *,
    limit: int = 50,
    title: str | None = "A title",
) -> TurnStart:
    return await store.begin_turn(
        user, conversation_id, ChatMessage.user(text), turn_id=uuid.uuid4(), history_limit=limit, title=title
    )


async def reply(store: ConversationStore, user: str, conversation_id: uuid.UUID, *texts: str) -> tuple[Message, ...]:
    return await store.finish_turn(
        user, conversation_id, [ChatMessage.assistant(t) for t in texts], turn_id=uuid.uuid4()
    )


async def test_begin_turn_without_id_creates_a_conversation(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    turn_id = uuid.uuid4()
    message = ChatMessage.user("Add milk to my list")

    start = await store.begin_turn(alice, None, message, turn_id=turn_id, history_limit=10, title="Add milk")

    assert start.created is True
    assert start.history == ()
    assert start.conversation.user_id == alice
    assert start.conversation.title == "Add milk"
    stored = start.user_message
    assert (stored.id, stored.role, stored.content) == (message.id, Role.USER, "Add milk to my list")
    assert (stored.conversation_id, stored.seq, stored.turn_id) == (start.conversation.id, 1, turn_id)
    assert stored.status is MessageStatus.COMPLETE
    assert await stored_conversation(reader, alice, start.conversation.id) == start.conversation
    assert await stored_history(reader, alice, start.conversation.id, 10) == (stored,)


async def test_a_conversation_may_have_no_title(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice, title=None)

    assert (await stored_conversation(reader, alice, start.conversation.id)).title is None


async def test_begin_turn_with_id_continues_the_conversation(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    first = await begin(store, alice, text="first")
    answer = await reply(store, alice, first.conversation.id, "an answer")

    second = await begin(store, alice, first.conversation.id, "second")

    assert second.created is False
    assert second.conversation.id == first.conversation.id
    assert second.history == (first.user_message, *answer)
    assert second.user_message.seq == 3
    assert second.conversation == await stored_conversation(reader, alice, first.conversation.id)
    assert await stored_history(reader, alice, first.conversation.id, 10) == (
        first.user_message,
        *answer,
        second.user_message,
    )


async def test_seqs_run_from_one_without_gaps(store: ConversationStore, reader: ConversationReader, alice: str) -> None:
    start = await begin(store, alice, text="u1")
    conversation_id = start.conversation.id
    expected = ["u1"]
    for turn, replies in enumerate([3, 0, 1, 2], start=2):
        texts = [f"a{turn}.{i}" for i in range(replies)]
        await reply(store, alice, conversation_id, *texts)
        expected += texts
        await begin(store, alice, conversation_id, f"u{turn}")
        expected.append(f"u{turn}")

    history = await stored_history(reader, alice, conversation_id, 1_000)

    assert [m.seq for m in history] == list(range(1, len(expected) + 1))
    assert [m.content for m in history] == expected


async def test_the_window_is_the_last_n_messages_oldest_first(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice, text="m1")
    conversation_id = start.conversation.id
    await reply(store, alice, conversation_id, "m2", "m3", "m4", "m5", "m6")

    windowed = await begin(store, alice, conversation_id, "m7", limit=3)

    assert [m.content for m in windowed.history] == ["m4", "m5", "m6"]
    assert [m.seq for m in windowed.history] == [4, 5, 6]
    assert windowed.user_message.seq == 7
    assert [m.content for m in await stored_history(reader, alice, conversation_id, 2)] == ["m6", "m7"]
    assert [m.content for m in await stored_history(reader, alice, conversation_id, 100)] == [
        f"m{i}" for i in range(1, 8)
    ]
    assert await stored_history(reader, alice, conversation_id, 0) == ()
    assert (await begin(store, alice, conversation_id, "m8", limit=0)).history == ()


async def test_another_users_conversation_is_not_found_in_every_method(
    store: ConversationStore, reader: ConversationReader, alice: str, bob: str
) -> None:
    start = await begin(store, alice, text="private")
    conversation_id = start.conversation.id
    before = await stored_history(reader, alice, conversation_id, 100)

    for user, target in [(bob, conversation_id), (alice, uuid.uuid4())]:
        with pytest.raises(ConversationNotFound):
            await begin(store, user, target, "let me in")
        with pytest.raises(ConversationNotFound):
            await reply(store, user, target, "sneaky")
        with pytest.raises(ConversationNotFound):
            await store.finish_turn(user, target, [], turn_id=uuid.uuid4())
        with pytest.raises(ConversationNotFound):
            await store.mark_unanswered(user, target, start.user_message.id)
        with pytest.raises(ConversationNotFound):
            await stored_conversation(reader, user, target)
        with pytest.raises(ConversationNotFound):
            await stored_history(reader, user, target, 10)

    assert await stored_history(reader, alice, conversation_id, 100) == before
    assert (await reply(store, alice, conversation_id, "next"))[0].seq == 2


@pytest.mark.parametrize("duplicate_of", ["an earlier message of the batch", "a stored message"])
async def test_finish_turn_is_all_or_nothing(
    store: ConversationStore, reader: ConversationReader, alice: str, duplicate_of: str
) -> None:
    start = await begin(store, alice)
    conversation_id = start.conversation.id
    first = ChatMessage.assistant("first of the batch")
    clash = first.id if duplicate_of == "an earlier message of the batch" else start.user_message.id
    batch = [first, ChatMessage.assistant("middle"), replace(ChatMessage.assistant("clashing"), id=clash)]

    with pytest.raises(Exception) as raised:  # noqa: PT011 - the port names no error for a broken batch
        await store.finish_turn(alice, conversation_id, batch, turn_id=uuid.uuid4())

    assert not isinstance(raised.value, StoreUnavailable), "a bad batch is a bug, not an outage"
    assert await stored_history(reader, alice, conversation_id, 100) == (start.user_message,)
    stored = await store.finish_turn(alice, conversation_id, batch[:2], turn_id=uuid.uuid4())
    assert [m.seq for m in stored] == [2, 3], "the failed batch must not burn sequence numbers"


async def test_finish_turn_numbers_messages_in_order_and_records_the_turn(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice)
    turn_id = uuid.uuid4()
    batch = [ChatMessage.assistant("one"), ChatMessage.assistant("two"), ChatMessage.assistant("three")]

    stored = await store.finish_turn(alice, start.conversation.id, batch, turn_id=turn_id)

    assert [(m.id, m.content, m.seq) for m in stored] == [(m.id, m.content, i) for i, m in enumerate(batch, start=2)]
    assert {m.turn_id for m in stored} == {turn_id}
    assert {m.conversation_id for m in stored} == {start.conversation.id}
    assert await store.finish_turn(alice, start.conversation.id, [], turn_id=turn_id) == ()
    assert await stored_history(reader, alice, start.conversation.id, 10) == (start.user_message, *stored)


async def test_mark_unanswered_flags_only_that_message(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    first = await begin(store, alice, text="answered")
    await reply(store, alice, first.conversation.id, "the answer")
    failed = await begin(store, alice, first.conversation.id, "never answered")
    elsewhere = await begin(store, alice, text="another conversation")

    await store.mark_unanswered(alice, first.conversation.id, failed.user_message.id)
    await store.mark_unanswered(alice, first.conversation.id, uuid.uuid4())
    await store.mark_unanswered(alice, first.conversation.id, elsewhere.user_message.id)

    history = await stored_history(reader, alice, first.conversation.id, 10)
    assert [m.status for m in history] == [MessageStatus.COMPLETE, MessageStatus.COMPLETE, MessageStatus.UNANSWERED]
    assert history[-1] == replace(failed.user_message, status=MessageStatus.UNANSWERED)
    assert (await stored_history(reader, alice, elsewhere.conversation.id, 10))[0].status is MessageStatus.COMPLETE


async def test_tool_calls_and_results_round_trip(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice, text="Ajoute « lait » 🥛 à ma liste")
    add = ToolCall(
        "call_add_1",
        "add_task",
        {
            "title": "Buy 牛奶 🥛",
            "details": {"tags": ["עברית", "emoji ✓"], "priority": 2, "ratio": 0.5, "done": False, "due": None},
            "empty": {},
        },
    )
    listing = ToolCall("call_list_2", "list_tasks", {})
    batch = [
        ChatMessage.assistant("", [add, listing]),
        ChatMessage.tool_result(add, ToolResult(result={"id": 7, "title": "Buy 牛奶 🥛"})),
        ChatMessage.tool_result(listing, ToolResult(error="store is down ✗")),
        ChatMessage.assistant("J'ai ajouté « Buy 牛奶 🥛 ». ✓"),
    ]

    stored = await store.finish_turn(alice, start.conversation.id, batch, turn_id=uuid.uuid4())
    history = await stored_history(reader, alice, start.conversation.id, 10)

    assert history == (start.user_message, *stored)
    assert history[0].content == "Ajoute « lait » 🥛 à ma liste"
    assert history[1].tool_calls == (add, listing)
    assert history[1].tool_calls[0].arguments["details"]["tags"] == ["עברית", "emoji ✓"]
    assert (history[2].role, history[2].tool_call_id, history[2].is_error) == (Role.TOOL, "call_add_1", False)
    assert ToolResult.from_content(history[2].content, is_error=False).result == {"id": 7, "title": "Buy 牛奶 🥛"}
    assert (history[3].tool_call_id, history[3].is_error) == ("call_list_2", True)
    assert history[4].tool_calls == ()
    # The window the next turn begins with is read another way on PostgreSQL (one JSON column): the same messages.
    next_turn = await begin(store, alice, start.conversation.id, "and now?", limit=10)
    assert next_turn.history == history


async def test_timestamps_are_timezone_aware_and_keep_the_instant(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice)
    written_in_india = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    message = replace(ChatMessage.assistant("from elsewhere"), created_at=written_in_india)

    await store.finish_turn(alice, start.conversation.id, [message], turn_id=uuid.uuid4())

    conversation = await stored_conversation(reader, alice, start.conversation.id)
    history = await stored_history(reader, alice, start.conversation.id, 10)
    for moment in (conversation.created_at, conversation.updated_at, *(m.created_at for m in history)):
        assert moment.utcoffset() is not None
    assert history[1].created_at == written_in_india
    assert history[1].created_at.astimezone(UTC) == datetime(2025, 3, 1, 4, 0, 15, 123456, tzinfo=UTC)
    window = (await begin(store, alice, start.conversation.id, "next", limit=10)).history
    assert window == history
    assert all(m.created_at.utcoffset() is not None for m in window)
    assert conversation.updated_at >= start.conversation.updated_at >= conversation.created_at


async def test_concurrent_finish_turns_get_unique_consecutive_seqs(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    start = await begin(store, alice)
    conversation_id = start.conversation.id

    results = await asyncio.gather(*(reply(store, alice, conversation_id, f"{i}a", f"{i}b") for i in range(10)))

    for result in results:
        assert result[1].seq == result[0].seq + 1
    assert sorted(m.seq for result in results for m in result) == list(range(2, 22))
    history = await stored_history(reader, alice, conversation_id, 100)
    assert [m.seq for m in history] == list(range(1, 22))
    assert sorted(history[1:], key=lambda m: m.seq) == sorted((m for r in results for m in r), key=lambda m: m.seq)


async def test_concurrent_turns_on_one_conversation_get_unique_seqs(store: ConversationStore, alice: str) -> None:
    start = await begin(store, alice)

    starts = await asyncio.gather(*(begin(store, alice, start.conversation.id, f"q{i}", limit=5) for i in range(6)))

    assert sorted(s.user_message.seq for s in starts) == list(range(2, 8))
    for each in starts:
        assert [m.seq for m in each.history] == list(range(max(1, each.user_message.seq - 5), each.user_message.seq))


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
"""PostgreSQL text cannot hold NUL; the service rejects it in user messages."""

TURN = st.tuples(
    st.integers(0, 1),  # which user
    st.integers(0, 2),  # which of that user's conversations (past the end: a new one)
    st.integers(0, 3),  # how many replies the turn stores
    st.integers(0, 4),  # history window
    TEXT,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(TURN, min_size=1, max_size=10))
async def test_random_turns_by_two_users_match_a_simple_model(
    store: ConversationStore, reader: ConversationReader, turns: list[tuple[int, int, int, int, str]]
) -> None:
    users = (new_user(), new_user())
    owner: dict[uuid.UUID, str] = {}
    model: dict[uuid.UUID, list[tuple[Role, str]]] = {}

    for user_index, pick, replies, limit, text in turns:
        user, other = users[user_index], users[1 - user_index]
        mine = [c for c in model if owner[c] == user]
        target = mine[pick] if pick < len(mine) else None
        if target is not None:
            with pytest.raises(ConversationNotFound):
                await begin(store, other, target, text)

        start = await begin(store, user, target, text, limit=limit)

        past = model.setdefault(start.conversation.id, [])
        owner[start.conversation.id] = user
        assert [(m.role, m.content) for m in start.history] == (past[-limit:] if limit else [])
        assert start.user_message.seq == len(past) + 1
        past.append((Role.USER, text))
        answers = [f"{text}/{i}" for i in range(replies)]
        stored = await reply(store, user, start.conversation.id, *answers)
        assert [m.seq for m in stored] == list(range(len(past) + 1, len(past) + 1 + replies))
        past.extend((Role.ASSISTANT, a) for a in answers)

    for conversation_id, messages in model.items():
        history = await stored_history(reader, owner[conversation_id], conversation_id, 1_000)
        assert [(m.role, m.content) for m in history] == messages
        assert [m.seq for m in history] == list(range(1, len(messages) + 1))
        intruder = users[1 - users.index(owner[conversation_id])]
        with pytest.raises(ConversationNotFound):
            await stored_history(reader, intruder, conversation_id, 10)
