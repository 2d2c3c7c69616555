"""The ConversationStore contract for turns that happen exactly once, on every adapter (memory, SQLite, PostgreSQL).

Conversation leases: one turn at a time holds a conversation, a lease expires, a heartbeat renews it, a
failed turn gives it back. Idempotency-Keys: claimed by one turn, completed in the same transaction as
the turn's messages, judged against the request, scoped per user, expiring. A controllable clock
stands in for time, so expiry is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from chatcore.errors import (
    ConversationBusy,
    ConversationNotFound,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    LeaseLost,
)
from chatcore.idempotency import IdempotencyRecord, IdempotentReply, as_replayed
from chatcore.model import ChatMessage, ChatReply, ToolCallRecord, TurnStart
from chatcore.ports import ConversationReader, ConversationStore, TurnClaimStore
from tests.contract.conftest import Clock
from tests.stores import stored_history

pytestmark = pytest.mark.postgres_core

LEASE = 60.0
HASH_A = "a" * 64
HASH_B = "b" * 64


@pytest.fixture
def alice() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.fixture
def bob() -> str:
    return f"user-{uuid.uuid4().hex}"


async def begin(
    store: ConversationStore,
    user: str,
    conversation_id: uuid.UUID | None = None,
    *,
    turn_id: uuid.UUID | None = None,
    lease: float | None = LEASE,
    text: str = "hello",
) -> TurnStart:
    return await store.begin_turn(
        user,
        conversation_id,
        ChatMessage.user(text),
        turn_id=turn_id or uuid.uuid4(),
        history_limit=50,
        title="t",
        lease_seconds=lease,
    )


def a_reply(conversation_id: uuid.UUID, text: str = "Done ✓") -> ChatReply:
    return as_replayed(
        ChatReply(
            conversation_id=conversation_id,
            message_id=uuid.uuid4(),
            response=text,
            tool_calls=(
                ToolCallRecord("call_1", "add_task", {"title": "Buy 牛奶"}, {"task_id": 7, "title": "Buy 牛奶"}),
                ToolCallRecord("call_2", "complete_task", {"task_id": 99}, None, "Task 99 not found"),
            ),
        )
    )


# --- conversation leases ----------------------------------------------------------------------------------------


async def test_a_leased_conversation_is_busy_for_every_other_turn_and_nothing_is_stored(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    first = await begin(store, alice)
    conversation_id = first.conversation.id

    with pytest.raises(ConversationBusy):
        await begin(store, alice, conversation_id, text="leased")
    with pytest.raises(ConversationBusy):
        await begin(store, alice, conversation_id, lease=None, text="unleased")

    assert await stored_history(reader, alice, conversation_id, 10) == (first.user_message,)


async def test_finishing_the_turn_frees_the_conversation(store: ConversationStore, alice: str) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id)

    [answer] = await store.finish_turn(alice, first.conversation.id, [ChatMessage.assistant("hi")], turn_id=turn_id)
    second = await begin(store, alice, first.conversation.id, text="next")

    assert second.history == (first.user_message, answer)
    assert second.user_message.seq == 3


async def test_a_lease_expires_by_itself(store: ConversationStore, alice: str, clock: Clock) -> None:
    first = await begin(store, alice, lease=10)
    clock.advance(9)
    with pytest.raises(ConversationBusy):
        await begin(store, alice, first.conversation.id)

    clock.advance(2)
    second = await begin(store, alice, first.conversation.id, text="after a crash")

    assert second.history == (first.user_message,)


async def test_a_turn_that_lost_its_lease_stores_nothing(
    store: ConversationStore, reader: ConversationReader, claims: TurnClaimStore, alice: str, clock: Clock
) -> None:
    stalled = uuid.uuid4()
    first = await begin(store, alice, turn_id=stalled, lease=10)
    clock.advance(11)
    taker = uuid.uuid4()
    second = await begin(store, alice, first.conversation.id, turn_id=taker, text="took over")

    with pytest.raises(LeaseLost):
        await store.finish_turn(alice, first.conversation.id, [ChatMessage.assistant("late")], turn_id=stalled)
    assert (
        await claims.renew_turn(
            alice, stalled, conversation_id=first.conversation.id, idempotency_key=None, lease_seconds=10
        )
        is False
    )

    assert await stored_history(reader, alice, first.conversation.id, 10) == (first.user_message, second.user_message)
    await store.finish_turn(alice, first.conversation.id, [ChatMessage.assistant("on time")], turn_id=taker)


async def test_a_stalled_turn_may_still_finish_when_nobody_took_its_expired_lease(
    store: ConversationStore, alice: str, clock: Clock
) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id, lease=10)
    clock.advance(30)

    stored = await store.finish_turn(alice, first.conversation.id, [ChatMessage.assistant("slow")], turn_id=turn_id)

    assert [m.seq for m in stored] == [2]


async def test_a_heartbeat_keeps_the_lease(
    store: ConversationStore, claims: TurnClaimStore, alice: str, clock: Clock
) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id, lease=10)
    conversation_id = first.conversation.id

    for _ in range(3):
        clock.advance(8)
        assert await claims.renew_turn(
            alice, turn_id, conversation_id=conversation_id, idempotency_key=None, lease_seconds=10
        )
    with pytest.raises(ConversationBusy):
        await begin(store, alice, conversation_id)
    assert not await claims.renew_turn(
        alice, uuid.uuid4(), conversation_id=conversation_id, idempotency_key=None, lease_seconds=10
    ), "only the holder renews"
    clock.advance(11)
    await begin(store, alice, conversation_id, text="after the holder stopped beating")


async def test_release_frees_the_conversation_and_only_the_holder_can_release(
    store: ConversationStore, claims: TurnClaimStore, alice: str
) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id)
    conversation_id = first.conversation.id

    await claims.release_turn(alice, uuid.uuid4(), conversation_id=conversation_id, idempotency_key=None)
    with pytest.raises(ConversationBusy):
        await begin(store, alice, conversation_id)
    await claims.release_turn(alice, turn_id, conversation_id=conversation_id, idempotency_key=None)

    assert (await begin(store, alice, conversation_id, text="next")).user_message.seq == 2


async def test_another_users_leased_conversation_is_not_found_not_busy(
    store: ConversationStore, claims: TurnClaimStore, alice: str, bob: str
) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id)
    conversation_id = first.conversation.id

    with pytest.raises(ConversationNotFound):
        await begin(store, bob, conversation_id)
    with pytest.raises(ConversationNotFound):
        await store.finish_turn(bob, conversation_id, [ChatMessage.assistant("x")], turn_id=turn_id)
    assert not await claims.renew_turn(
        bob, turn_id, conversation_id=conversation_id, idempotency_key=None, lease_seconds=10
    )
    await claims.release_turn(bob, turn_id, conversation_id=conversation_id, idempotency_key=None)
    with pytest.raises(ConversationBusy):
        await begin(store, alice, conversation_id)


async def test_concurrent_leased_turns_on_one_conversation_start_one_at_a_time(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    turn_id = uuid.uuid4()
    first = await begin(store, alice, turn_id=turn_id)
    await store.finish_turn(alice, first.conversation.id, [], turn_id=turn_id)

    outcomes = await asyncio.gather(
        *(begin(store, alice, first.conversation.id, text=f"q{i}") for i in range(8)), return_exceptions=True
    )

    started = [o for o in outcomes if isinstance(o, TurnStart)]
    assert len(started) == 1
    assert all(isinstance(o, ConversationBusy) for o in outcomes if not isinstance(o, TurnStart))
    assert [m.content for m in await stored_history(reader, alice, first.conversation.id, 10)] == [
        "hello",
        started[0].user_message.content,
    ]


async def answer_keyed(
    store: ConversationStore, user: str, turn_id: uuid.UUID, key: str, *, ttl_seconds: float
) -> ChatReply:
    """Turn ``turn_id`` (which claimed ``key``) begun and finished with a reply stored under the key."""
    start = await begin(store, user, turn_id=turn_id)
    reply = a_reply(start.conversation.id)
    await store.finish_turn(
        user,
        start.conversation.id,
        [ChatMessage.assistant(reply.response)],
        turn_id=turn_id,
        idempotency=IdempotentReply(key, reply, ttl_seconds=ttl_seconds),
    )
    return reply


# --- idempotency keys -------------------------------------------------------------------------------------------


async def test_a_key_is_claimed_once_and_judged_against_the_request(
    store: ConversationStore, claims: TurnClaimStore, alice: str
) -> None:
    assert await claims.claim_idempotency_key(alice, "k1", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE) is None

    with pytest.raises(IdempotencyInProgress):
        await claims.claim_idempotency_key(alice, "k1", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE)
    with pytest.raises(IdempotencyKeyReused):
        await claims.claim_idempotency_key(alice, "k1", HASH_B, turn_id=uuid.uuid4(), hold_seconds=LEASE)


async def test_keys_are_scoped_per_user(store: ConversationStore, claims: TurnClaimStore, alice: str, bob: str) -> None:
    assert await claims.claim_idempotency_key(alice, "same", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE) is None
    assert await claims.claim_idempotency_key(bob, "same", HASH_B, turn_id=uuid.uuid4(), hold_seconds=LEASE) is None


async def test_the_reply_is_stored_with_the_turns_messages(
    store: ConversationStore, claims: TurnClaimStore, alice: str
) -> None:
    turn_id = uuid.uuid4()
    assert await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=LEASE) is None
    reply = await answer_keyed(store, alice, turn_id, "k", ttl_seconds=3600)

    replayed = await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE)
    assert replayed == reply
    with pytest.raises(IdempotencyKeyReused):
        await claims.claim_idempotency_key(alice, "k", HASH_B, turn_id=uuid.uuid4(), hold_seconds=LEASE)


async def test_a_keys_record_names_its_turn_while_it_runs_and_after_it_answered(
    store: ConversationStore, claims: TurnClaimStore, alice: str, bob: str, clock: Clock
) -> None:
    assert await claims.idempotency_record(alice, "k") is None
    turn_id = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=LEASE)

    assert await claims.idempotency_record(alice, "k") == IdempotencyRecord(HASH_A, turn_id, None)
    assert await claims.idempotency_record(bob, "k") is None, "keys are per user"

    reply = await answer_keyed(store, alice, turn_id, "k", ttl_seconds=100)

    assert await claims.idempotency_record(alice, "k") == IdempotencyRecord(HASH_A, turn_id, reply)
    assert not await claims.renew_turn(alice, turn_id, conversation_id=None, idempotency_key="k", lease_seconds=10)
    await claims.release_turn(alice, turn_id, conversation_id=None, idempotency_key="k")
    assert await claims.idempotency_record(alice, "k") == IdempotencyRecord(HASH_A, turn_id, reply), (
        "a finished turn's reply is kept until its TTL, whatever its turn does"
    )
    clock.advance(101)
    assert await claims.idempotency_record(alice, "k") is None


async def test_a_failed_batch_stores_neither_messages_nor_reply(
    store: ConversationStore, reader: ConversationReader, claims: TurnClaimStore, alice: str
) -> None:
    turn_id = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=LEASE)
    start = await begin(store, alice, turn_id=turn_id)
    clash = replace(ChatMessage.assistant("clashing"), id=start.user_message.id)

    with pytest.raises(Exception):  # noqa: B017, PT011 - the port names no error for a broken batch
        await store.finish_turn(
            alice,
            start.conversation.id,
            [ChatMessage.assistant("first"), clash],
            turn_id=turn_id,
            idempotency=IdempotentReply("k", a_reply(start.conversation.id), ttl_seconds=3600),
        )

    assert await stored_history(reader, alice, start.conversation.id, 10) == (start.user_message,)
    with pytest.raises(IdempotencyInProgress):
        await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE)


async def test_a_released_key_lets_a_retry_run(store: ConversationStore, claims: TurnClaimStore, alice: str) -> None:
    turn_id = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=LEASE)

    await claims.release_turn(alice, uuid.uuid4(), conversation_id=None, idempotency_key="k")
    with pytest.raises(IdempotencyInProgress):
        await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE)
    await claims.release_turn(alice, turn_id, conversation_id=None, idempotency_key="k")

    assert await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE) is None


async def test_a_stale_claim_is_taken_over_and_its_turn_cannot_complete(
    store: ConversationStore, reader: ConversationReader, claims: TurnClaimStore, alice: str, clock: Clock
) -> None:
    stalled = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=stalled, hold_seconds=10)
    start = await begin(store, alice, turn_id=stalled, lease=10)
    clock.advance(11)

    retry = uuid.uuid4()
    assert await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=retry, hold_seconds=10) is None

    with pytest.raises(LeaseLost):
        await store.finish_turn(
            alice,
            start.conversation.id,
            [ChatMessage.assistant("late")],
            turn_id=stalled,
            idempotency=IdempotentReply("k", a_reply(start.conversation.id), ttl_seconds=3600),
        )
    assert await stored_history(reader, alice, start.conversation.id, 10) == (start.user_message,)
    assert not await claims.renew_turn(alice, stalled, conversation_id=None, idempotency_key="k", lease_seconds=10), (
        "the key is the retry's now"
    )


async def test_a_heartbeat_keeps_the_claim(
    store: ConversationStore, claims: TurnClaimStore, alice: str, clock: Clock
) -> None:
    turn_id = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=10)

    for _ in range(3):
        clock.advance(8)
        assert await claims.renew_turn(alice, turn_id, conversation_id=None, idempotency_key="k", lease_seconds=10)

    with pytest.raises(IdempotencyInProgress):
        await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=10)


async def test_a_stored_reply_expires_after_its_ttl(
    store: ConversationStore, claims: TurnClaimStore, alice: str, clock: Clock
) -> None:
    turn_id = uuid.uuid4()
    await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=turn_id, hold_seconds=LEASE)
    start = await begin(store, alice, turn_id=turn_id)
    reply = a_reply(start.conversation.id)
    await store.finish_turn(
        alice,
        start.conversation.id,
        [ChatMessage.assistant("done")],
        turn_id=turn_id,
        idempotency=IdempotentReply("k", reply, ttl_seconds=100),
    )

    clock.advance(99)
    assert await claims.claim_idempotency_key(alice, "k", HASH_A, turn_id=uuid.uuid4(), hold_seconds=1) == reply
    clock.advance(2)

    assert await claims.claim_idempotency_key(alice, "k", HASH_B, turn_id=uuid.uuid4(), hold_seconds=LEASE) is None


async def test_concurrent_claims_of_one_key_have_one_winner(
    store: ConversationStore, claims: TurnClaimStore, alice: str
) -> None:
    outcomes = await asyncio.gather(
        *(
            claims.claim_idempotency_key(alice, "race", HASH_A, turn_id=uuid.uuid4(), hold_seconds=LEASE)
            for _ in range(8)
        ),
        return_exceptions=True,
    )

    assert outcomes.count(None) == 1
    assert all(isinstance(o, IdempotencyInProgress) for o in outcomes if o is not None)
