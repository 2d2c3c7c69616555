"""The TurnEventStore contract on every adapter: in-memory, SQLite, PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError

from chatcore.errors import ConversationNotFound, TurnNotFound
from chatcore.model import ChatMessage, TurnEvent, TurnStatus
from tests.stores import ConversationStores


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def conversation_of(stores: ConversationStores, user: str) -> uuid.UUID:
    start = await stores.store.begin_turn(user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=10)
    return start.conversation.id


def events(turn_id: uuid.UUID, first: int, count: int) -> list[TurnEvent]:
    return [
        TurnEvent(turn_id, seq, "delta", {"text": f"word {seq}", "nested": [seq]})
        for seq in range(first, first + count)
    ]


async def test_a_begun_turn_runs_and_its_events_read_back_in_order(stores: ConversationStores) -> None:
    alice = new_user()
    conversation_id = await conversation_of(stores, alice)
    turn_id = uuid.uuid4()

    state = await stores.events.begin(alice, conversation_id, turn_id)
    await stores.events.append(alice, events(turn_id, 1, 3))
    await stores.events.append(alice, [TurnEvent(turn_id, 4, "done", {"response": "ok", "interrupted": False})])

    assert (state.id, state.conversation_id, state.user_id) == (turn_id, conversation_id, alice)
    assert (state.status, state.stop_requested) == (TurnStatus.RUNNING, False)
    read = await stores.events.read(alice, turn_id)
    assert [(e.seq, e.type) for e in read] == [(1, "delta"), (2, "delta"), (3, "delta"), (4, "done")]
    assert read[0] == TurnEvent(turn_id, 1, "delta", {"text": "word 1", "nested": [1]})
    assert [e.seq for e in await stores.events.read(alice, turn_id, after=2)] == [3, 4]
    assert [e.seq for e in await stores.events.read(alice, turn_id, after=1, limit=2)] == [2, 3]
    assert await stores.events.read(alice, turn_id, after=4) == ()


async def test_end_records_the_status(stores: ConversationStores) -> None:
    alice = new_user()
    turn_id = uuid.uuid4()
    await stores.events.begin(alice, await conversation_of(stores, alice), turn_id)

    await stores.events.end(alice, turn_id, TurnStatus.INTERRUPTED)

    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.INTERRUPTED


async def test_a_stop_request_flags_only_the_running_turns_of_the_conversation(stores: ConversationStores) -> None:
    alice = new_user()
    conversation_id = await conversation_of(stores, alice)
    other_conversation = await conversation_of(stores, alice)
    running, finished, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await stores.events.begin(alice, conversation_id, finished)
    await stores.events.end(alice, finished, TurnStatus.COMPLETE)
    await stores.events.begin(alice, conversation_id, running)
    await stores.events.begin(alice, other_conversation, elsewhere)

    stopped = await stores.events.request_stop(alice, conversation_id)

    assert stopped == (running,)
    assert (await stores.events.state(alice, running)).stop_requested is True
    assert (await stores.events.state(alice, finished)).stop_requested is False
    assert (await stores.events.state(alice, elsewhere)).stop_requested is False
    assert await stores.events.request_stop(alice, other_conversation) == (elsewhere,)


async def test_nothing_running_means_nothing_stopped(stores: ConversationStores) -> None:
    alice = new_user()

    assert await stores.events.request_stop(alice, await conversation_of(stores, alice)) == ()


async def test_another_users_turns_and_conversations_are_not_found(stores: ConversationStores) -> None:
    alice, bob = new_user(), new_user()
    conversation_id = await conversation_of(stores, alice)
    turn_id = uuid.uuid4()
    await stores.events.begin(alice, conversation_id, turn_id)
    await stores.events.append(alice, events(turn_id, 1, 1))

    with pytest.raises(ConversationNotFound):
        await stores.events.begin(bob, conversation_id, uuid.uuid4())
    with pytest.raises(TurnNotFound):
        await stores.events.read(bob, turn_id)
    with pytest.raises(TurnNotFound):
        await stores.events.state(bob, turn_id)
    with pytest.raises(TurnNotFound):
        await stores.events.append(bob, events(turn_id, 2, 1))
    with pytest.raises(ConversationNotFound):
        await stores.events.request_stop(bob, conversation_id)
    with pytest.raises(TurnNotFound):
        await stores.events.state(alice, uuid.uuid4())
    assert [e.seq for e in await stores.events.read(alice, turn_id)] == [1]
    assert (await stores.events.state(alice, turn_id)).stop_requested is False


async def test_a_batch_with_a_taken_seq_stores_nothing(stores: ConversationStores) -> None:
    alice = new_user()
    turn_id = uuid.uuid4()
    await stores.events.begin(alice, await conversation_of(stores, alice), turn_id)
    await stores.events.append(alice, events(turn_id, 1, 2))

    with pytest.raises((ValueError, IntegrityError)):  # the fake's and the database's integrity errors
        await stores.events.append(alice, events(turn_id, 2, 3))

    assert [e.seq for e in await stores.events.read(alice, turn_id)] == [1, 2]


async def test_deleting_the_conversation_deletes_its_turns_and_events(stores: ConversationStores) -> None:
    alice = new_user()
    conversation_id = await conversation_of(stores, alice)
    turn_id = uuid.uuid4()
    await stores.events.begin(alice, conversation_id, turn_id)
    await stores.events.append(alice, events(turn_id, 1, 2))

    await stores.store.delete(alice, conversation_id)

    with pytest.raises(TurnNotFound):
        await stores.events.read(alice, turn_id)
    with pytest.raises(TurnNotFound):
        await stores.events.state(alice, turn_id)


async def test_the_running_turn_of_a_conversation_is_the_running_turn_holding_its_lease(
    stores: ConversationStores,
) -> None:
    alice, bob = new_user(), new_user()
    turn_id = uuid.uuid4()
    start = await stores.store.begin_turn(
        alice, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10, lease_seconds=60
    )
    conversation_id = start.conversation.id
    assert await stores.events.running(alice, conversation_id) is None  # the lease's turn is not streamed

    await stores.events.begin(alice, conversation_id, turn_id)

    running = await stores.events.running(alice, conversation_id)
    assert running is not None
    assert (running.id, running.conversation_id, running.status) == (turn_id, conversation_id, TurnStatus.RUNNING)
    assert await stores.events.running(bob, conversation_id) is None
    assert await stores.events.running(alice, uuid.uuid4()) is None

    await stores.store.finish_turn(alice, conversation_id, [ChatMessage.assistant("hello")], turn_id=turn_id)
    assert await stores.events.running(alice, conversation_id) is None


async def test_a_running_turn_whose_lease_is_gone_is_not_running(stores: ConversationStores) -> None:
    alice = new_user()
    turn_id = uuid.uuid4()
    start = await stores.store.begin_turn(
        alice, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10, lease_seconds=60
    )
    await stores.events.begin(alice, start.conversation.id, turn_id)

    await stores.claims.release_turn(alice, turn_id, conversation_id=start.conversation.id, idempotency_key=None)

    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.RUNNING
    assert await stores.events.running(alice, start.conversation.id) is None


async def test_a_turn_begins_with_its_first_events_and_ends_with_its_last(stores: ConversationStores) -> None:
    alice = new_user()
    turn_id = uuid.uuid4()
    conversation_id = await conversation_of(stores, alice)

    state = await stores.events.begin(alice, conversation_id, turn_id, events(turn_id, 1, 1))
    await stores.events.append(alice, events(turn_id, 2, 2))
    await stores.events.end(
        alice, turn_id, TurnStatus.COMPLETE, [TurnEvent(turn_id, 4, "done", {"response": "ok", "interrupted": False})]
    )

    assert (state.id, state.conversation_id, state.status) == (turn_id, conversation_id, TurnStatus.RUNNING)
    read = await stores.events.read(alice, turn_id)
    assert [(e.seq, e.type) for e in read] == [(1, "delta"), (2, "delta"), (3, "delta"), (4, "done")]
    assert read[-1].data == {"response": "ok", "interrupted": False}
    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.COMPLETE


async def test_another_user_can_neither_begin_nor_end_a_turn_with_events(stores: ConversationStores) -> None:
    alice, bob = new_user(), new_user()
    conversation_id = await conversation_of(stores, alice)
    turn_id, bobs_turn = uuid.uuid4(), uuid.uuid4()
    await stores.events.begin(alice, conversation_id, turn_id, events(turn_id, 1, 1))

    with pytest.raises(ConversationNotFound):
        await stores.events.begin(bob, conversation_id, bobs_turn, events(bobs_turn, 1, 1))
    with pytest.raises(TurnNotFound):
        await stores.events.end(bob, turn_id, TurnStatus.COMPLETE, events(turn_id, 2, 1))

    assert [e.seq for e in await stores.events.read(alice, turn_id)] == [1]
    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.RUNNING
    with pytest.raises(TurnNotFound):
        await stores.events.read(bob, bobs_turn)
