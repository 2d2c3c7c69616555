"""Dead turns closed (``TurnEventStore.close_dead``, ``RetentionStore.close_dead_turns``) on every adapter.

A turn whose server died leaves its streamed log without an end and the conversation's lease naming it;
closing ends the log with an ``error`` event, gives the lease back and marks the turn's user message
unanswered. A live turn, and a turn that ended, are left alone.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from chatcore.idempotency import IdempotentReply
from chatcore.model import AbandonedTurn, ChatMessage, ChatReply, MessageStatus, TurnEvent, TurnStatus
from tests.contract.conftest import Clock
from tests.stores import ALL_MESSAGES, ConversationStores

LEASE = 5.0
ERROR = {"status_code": 503, "detail": "the server handling this turn stopped"}


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


def quiet_before(clock: Clock) -> datetime:
    return clock() - timedelta(seconds=LEASE)


async def streamed_turn(stores: ConversationStores, user: str, conversation_id: uuid.UUID | None = None) -> uuid.UUID:
    """A turn holding the conversation's lease, with a streamed log of two deltas; the conversation's id."""
    turn_id = uuid.uuid4()
    start = await stores.store.begin_turn(
        user, conversation_id, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10, lease_seconds=LEASE
    )
    await stores.events.begin(user, start.conversation.id, turn_id)
    await stores.events.append(user, [TurnEvent(turn_id, seq, "delta", {"text": f"word {seq}"}) for seq in (1, 2)])
    return turn_id


async def conversation_of(stores: ConversationStores, user: str, turn_id: uuid.UUID) -> uuid.UUID:
    return (await stores.events.state(user, turn_id)).conversation_id


async def test_a_turn_whose_lease_expired_is_closed_with_an_error_event_and_its_message_unanswered(
    stores: ConversationStores, clock: Clock
) -> None:
    alice = new_user()
    turn_id = await streamed_turn(stores, alice)
    conversation_id = await conversation_of(stores, alice, turn_id)
    clock.offset += timedelta(seconds=3 * LEASE)

    closed = await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR)

    assert closed == (turn_id,)
    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.INTERRUPTED
    log = await stores.events.read(alice, turn_id)
    assert [(e.seq, e.type) for e in log] == [(1, "delta"), (2, "delta"), (3, "error")]
    assert log[-1].data == {**ERROR, "conversation_id": str(conversation_id)}
    [user_message] = await stores.reader.list_messages(alice, conversation_id, limit=ALL_MESSAGES)
    assert (user_message.content, user_message.status) == ("hi", MessageStatus.UNANSWERED)
    assert await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR) == ()


async def test_a_live_turn_and_another_users_conversation_are_left_alone(
    stores: ConversationStores, clock: Clock
) -> None:
    alice, bob = new_user(), new_user()
    turn_id = await streamed_turn(stores, alice)
    conversation_id = await conversation_of(stores, alice, turn_id)

    assert await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR) == ()
    clock.offset += timedelta(seconds=3 * LEASE)
    assert await stores.events.close_dead(bob, conversation_id, quiet_before=quiet_before(clock), error=ERROR) == ()
    assert await stores.events.close_dead(alice, uuid.uuid4(), quiet_before=quiet_before(clock), error=ERROR) == ()

    assert (await stores.events.state(alice, turn_id)).status is TurnStatus.RUNNING
    assert [e.type for e in await stores.events.read(alice, turn_id)] == ["delta", "delta"]


async def test_a_turn_the_next_turn_took_over_from_is_closed_and_the_next_one_is_not(
    stores: ConversationStores, clock: Clock
) -> None:
    alice = new_user()
    dead = await streamed_turn(stores, alice)
    conversation_id = await conversation_of(stores, alice, dead)
    clock.offset += timedelta(seconds=3 * LEASE)
    await stores.events.append(alice, [TurnEvent(dead, 3, "done", {"response": "ok", "interrupted": False})])
    dead_silent = await streamed_turn(stores, alice, conversation_id)
    clock.offset += timedelta(seconds=3 * LEASE)
    live = await streamed_turn(stores, alice, conversation_id)

    closed = await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR)

    assert sorted(closed) == sorted([dead, dead_silent])
    assert (await stores.events.state(alice, dead)).status is TurnStatus.COMPLETE, "its log had ended: as it said"
    assert [e.type for e in await stores.events.read(alice, dead)] == ["delta", "delta", "done"]
    assert (await stores.events.state(alice, dead_silent)).status is TurnStatus.INTERRUPTED
    assert (await stores.events.read(alice, dead_silent))[-1].type == "error"
    assert (await stores.events.state(alice, live)).status is TurnStatus.RUNNING


async def test_a_json_turn_whose_lease_expired_gives_it_back_with_its_message_unanswered_unless_answered(
    stores: ConversationStores, clock: Clock
) -> None:
    alice = new_user()
    answered = uuid.uuid4()
    start = await stores.store.begin_turn(
        alice, None, ChatMessage.user("first"), turn_id=answered, history_limit=10, lease_seconds=LEASE
    )
    conversation_id = start.conversation.id
    await stores.store.append_turn(
        alice, conversation_id, [ChatMessage.assistant("done")], turn_id=answered, holder=answered
    )
    clock.offset += timedelta(seconds=3 * LEASE)
    assert await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR) == (
        answered,
    )
    dead = uuid.uuid4()
    await stores.store.begin_turn(
        alice, conversation_id, ChatMessage.user("second"), turn_id=dead, history_limit=10, lease_seconds=LEASE
    )
    clock.offset += timedelta(seconds=3 * LEASE)

    assert await stores.events.close_dead(alice, conversation_id, quiet_before=quiet_before(clock), error=ERROR) == (
        dead,
    )

    stored = await stores.reader.list_messages(alice, conversation_id, limit=ALL_MESSAGES)
    assert [(m.content, m.status) for m in stored] == [
        ("first", MessageStatus.COMPLETE),
        ("done", MessageStatus.COMPLETE),
        ("second", MessageStatus.UNANSWERED),
    ]
    await stores.store.begin_turn(
        alice, conversation_id, ChatMessage.user("third"), turn_id=uuid.uuid4(), history_limit=10, lease_seconds=LEASE
    )


async def test_the_janitors_close_finds_dead_turns_of_every_user(stores: ConversationStores, clock: Clock) -> None:
    alice, bob = new_user(), new_user()
    dead_streamed = await streamed_turn(stores, alice)
    dead_json = uuid.uuid4()
    start = await stores.store.begin_turn(
        bob, None, ChatMessage.user("hello"), turn_id=dead_json, history_limit=10, lease_seconds=LEASE
    )
    clock.offset += timedelta(seconds=3 * LEASE)
    live = await streamed_turn(stores, bob)

    closed = await stores.retention.close_dead_turns(quiet_before=quiet_before(clock), error=ERROR, limit=1000)

    assert {dead_streamed, dead_json} <= set(closed)
    assert live not in closed
    assert (await stores.events.state(alice, dead_streamed)).status is TurnStatus.INTERRUPTED
    assert (await stores.events.state(bob, live)).status is TurnStatus.RUNNING
    [message] = await stores.reader.list_messages(bob, start.conversation.id, limit=ALL_MESSAGES)
    assert message.status is MessageStatus.UNANSWERED
    again = await stores.retention.close_dead_turns(quiet_before=quiet_before(clock), error=ERROR, limit=1000)
    assert not {dead_streamed, dead_json} & set(again)


async def test_a_keyed_turn_whose_claim_expired_is_found_by_its_key_with_its_conversation(
    stores: ConversationStores, clock: Clock
) -> None:
    alice, bob = new_user(), new_user()
    dead, key = uuid.uuid4(), "key-1"
    assert await stores.claims.claim_idempotency_key(alice, key, "hash", turn_id=dead, hold_seconds=LEASE) is None
    start = await stores.store.begin_turn(
        alice, None, ChatMessage.user("hi"), turn_id=dead, history_limit=10, lease_seconds=LEASE
    )
    conversation_id = start.conversation.id
    assert await stores.claims.abandoned_turn(alice, key) is None, "still held"
    await stores.claims.claim_idempotency_key(alice, "nothing-stored", "hash", turn_id=uuid.uuid4(), hold_seconds=1)
    clock.offset += timedelta(seconds=3 * LEASE)

    assert await stores.claims.abandoned_turn(alice, key) == AbandonedTurn(dead, conversation_id, last=True)
    assert await stores.claims.abandoned_turn(bob, key) is None
    assert await stores.claims.abandoned_turn(alice, "nothing-stored") is None
    assert await stores.claims.abandoned_turn(alice, "unknown") is None

    await stores.store.begin_turn(
        alice, conversation_id, ChatMessage.user("later"), turn_id=uuid.uuid4(), history_limit=10
    )
    assert await stores.claims.abandoned_turn(alice, key) == AbandonedTurn(dead, conversation_id, last=False)


async def test_a_completed_key_has_no_abandoned_turn(stores: ConversationStores, clock: Clock) -> None:
    alice, turn_id, key = new_user(), uuid.uuid4(), "key-2"
    await stores.claims.claim_idempotency_key(alice, key, "hash", turn_id=turn_id, hold_seconds=LEASE)
    start = await stores.store.begin_turn(
        alice, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10, lease_seconds=LEASE
    )
    reply = ChatReply(start.conversation.id, uuid.uuid4(), "hello", ())
    await stores.store.finish_turn(
        alice,
        start.conversation.id,
        [ChatMessage.assistant("hello")],
        turn_id=turn_id,
        idempotency=IdempotentReply(key, reply, 3 * LEASE),
    )
    clock.offset += timedelta(seconds=2 * LEASE)

    assert await stores.claims.abandoned_turn(alice, key) is None
