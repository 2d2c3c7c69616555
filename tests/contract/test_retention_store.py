"""The RetentionStore contract on every backend of ``tests/contract/conftest.py``, and the Janitor over each.

The stores of one database are shared by the whole test session, and deletes work across users, so each
test first deletes everything that has ended (``drained``) and then counts only what it made itself.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from chatcore.errors import IdempotencyInProgress, TurnNotFound
from chatcore.idempotency import IdempotentReply
from chatcore.model import ChatMessage, ChatReply, TurnEvent, TurnStatus, utcnow
from chatcore.retention import Janitor, RetentionPolicy
from tests.stores import ConversationStores, stored_history

LATER = timedelta(days=1)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def drained(stores: ConversationStores, before: datetime) -> None:
    """Delete every event and turn that ended before ``before``, whoever's, so the test's counts are its own."""
    while await stores.retention.delete_turn_events(ended_before=before, limit=10_000):
        pass
    while await stores.retention.delete_turns(ended_before=before, limit=10_000):
        pass


async def turn_with_events(stores: ConversationStores, user: str, count: int, *, end: TurnStatus | None) -> uuid.UUID:
    start = await stores.store.begin_turn(user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=10)
    turn_id = uuid.uuid4()
    await stores.events.begin(user, start.conversation.id, turn_id)
    await stores.events.append(
        user, [TurnEvent(turn_id, seq, "delta", {"text": f"word {seq}"}) for seq in range(1, count + 1)]
    )
    if end is not None:
        await stores.events.end(user, turn_id, end)
    return turn_id


async def test_events_of_turns_that_ended_before_the_cutoff_go_in_batches_then_the_turns(
    stores: ConversationStores,
) -> None:
    alice = new_user()
    await drained(stores, utcnow() + LATER)
    old = [await turn_with_events(stores, alice, 3, end=status) for status in (TurnStatus.COMPLETE, TurnStatus.FAILED)]
    running = await turn_with_events(stores, alice, 2, end=None)
    await asyncio.sleep(0.01)
    cutoff = utcnow()
    await asyncio.sleep(0.01)
    recent = await turn_with_events(stores, alice, 2, end=TurnStatus.INTERRUPTED)

    batches = [await stores.retention.delete_turn_events(ended_before=cutoff, limit=4) for _ in range(3)]
    assert batches == [4, 2, 0], "at most limit per call, until none is left"
    for turn_id in old:
        assert await stores.events.read(alice, turn_id) == (), "the events are gone, the turn still answers"
    assert len(await stores.events.read(alice, running)) == 2, "a running turn keeps its events, however old"
    assert len(await stores.events.read(alice, recent)) == 2, "a turn that ended after the cutoff keeps them"

    assert await stores.retention.delete_turns(ended_before=cutoff, limit=1) == 1
    assert await stores.retention.delete_turns(ended_before=cutoff, limit=10) == 1
    assert await stores.retention.delete_turns(ended_before=cutoff, limit=10) == 0
    for turn_id in old:
        with pytest.raises(TurnNotFound):
            await stores.events.state(alice, turn_id)
    assert (await stores.events.state(alice, running)).status is TurnStatus.RUNNING
    assert (await stores.events.state(alice, recent)).status is TurnStatus.INTERRUPTED


async def test_a_turn_with_events_left_is_not_deleted_and_messages_always_stay(stores: ConversationStores) -> None:
    alice = new_user()
    await drained(stores, utcnow() + LATER)
    turn_id = await turn_with_events(stores, alice, 3, end=TurnStatus.COMPLETE)
    conversation_id = (await stores.events.state(alice, turn_id)).conversation_id
    later = utcnow() + LATER

    assert await stores.retention.delete_turns(ended_before=later, limit=10) == 0, "its events are still there"
    await drained(stores, later)

    with pytest.raises(TurnNotFound):
        await stores.events.state(alice, turn_id)
    assert [m.content for m in await stored_history(stores.reader, alice, conversation_id, 10)] == ["hi"]


async def test_expired_idempotency_keys_go_and_live_ones_stay(stores: ConversationStores) -> None:
    alice = new_user()
    while await stores.retention.delete_idempotency_keys(expired_by=utcnow(), limit=10_000):
        pass
    await stores.claims.claim_idempotency_key(alice, "live", "h2", turn_id=uuid.uuid4(), hold_seconds=600)
    replied = uuid.uuid4()
    await stores.claims.claim_idempotency_key(alice, "replied", "h3", turn_id=replied, hold_seconds=600)
    # Last: a claim may delete a few expired keys itself (the SQL stores do).
    await stores.claims.claim_idempotency_key(alice, "dead", "h1", turn_id=uuid.uuid4(), hold_seconds=0.001)
    start = await stores.store.begin_turn(alice, None, ChatMessage.user("hi"), turn_id=replied, history_limit=5)
    reply = ChatReply(start.conversation.id, uuid.uuid4(), "ok", ())
    await stores.store.finish_turn(
        alice,
        start.conversation.id,
        [ChatMessage.assistant("ok")],
        turn_id=replied,
        idempotency=IdempotentReply("replied", reply, ttl_seconds=0.001),
    )
    await asyncio.sleep(0.01)

    assert await stores.retention.delete_idempotency_keys(expired_by=utcnow(), limit=1) == 1
    assert await stores.retention.delete_idempotency_keys(expired_by=utcnow(), limit=10) == 1
    assert await stores.retention.delete_idempotency_keys(expired_by=utcnow(), limit=10) == 0
    again = await stores.claims.claim_idempotency_key(alice, "replied", "h3", turn_id=uuid.uuid4(), hold_seconds=60)
    assert again is None, "the expired reply is gone: the key is new again"
    with pytest.raises(IdempotencyInProgress):  # the live claim is still there
        await stores.claims.claim_idempotency_key(alice, "live", "h2", turn_id=uuid.uuid4(), hold_seconds=60)


async def test_one_holder_of_the_maintenance_lock_at_a_time(stores: ConversationStores) -> None:
    async with stores.retention.exclusive() as first, stores.retention.exclusive() as second:
        assert (first, second) == (True, False)
    async with stores.retention.exclusive() as again:
        assert again is True, "given back on exit"


async def test_the_janitor_sweeps_everything_expired_and_reports_the_counts(stores: ConversationStores) -> None:
    alice = new_user()
    await drained(stores, utcnow() + LATER)
    while await stores.retention.delete_idempotency_keys(expired_by=utcnow() + LATER, limit=10_000):
        pass
    ended = [await turn_with_events(stores, alice, 5, end=TurnStatus.COMPLETE) for _ in range(3)]
    running = await turn_with_events(stores, alice, 5, end=None)
    await stores.claims.claim_idempotency_key(alice, "k", "h", turn_id=uuid.uuid4(), hold_seconds=0.001)
    await asyncio.sleep(0.01)
    janitor = Janitor(stores.retention, RetentionPolicy(event_retention_seconds=0.005, batch_size=4))

    swept = await janitor.sweep_alone()

    assert swept is not None
    assert (swept.turn_events, swept.turns, swept.idempotency_keys) == (15, 3, 1)
    assert len(await stores.events.read(alice, running)) == 5
    for turn_id in ended:
        with pytest.raises(TurnNotFound):
            await stores.events.state(alice, turn_id)
    async with stores.retention.exclusive():
        assert await janitor.sweep_alone() is None, "another holder is sweeping"
