"""Model calls recorded with their turn's writes, on every ConversationStore adapter (``append_turn``/``finish_turn``
with ``usage``), read back through the UsageStore over the same database.

Each path a write can take is here: a step on its own (one statement on PostgreSQL), a step with pending approvals
and a turn kept open (transactions), the last write, a call recorded with no message (a failed call the provider
billed), and a refused write, which records nothing.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from chatcore.errors import ConversationNotFound, LeaseLost
from chatcore.model import ChatMessage, ToolApproval, ToolCall, ToolResult, Usage, utcnow
from chatcore.usage import ModelCall, UsageGrouping, UsageTotals
from tests.stores import ConversationStores

pytestmark = pytest.mark.postgres_core


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


def call(
    input_tokens: int, output_tokens: int, *, cached: int = 0, written: int = 0, cost: str | None = "0.001"
) -> ModelCall:
    return ModelCall(
        "openai",
        "gpt-4o-mini",
        Usage(input_tokens, output_tokens, cached, written),
        utcnow(),
        0.125,
        None if cost is None else Decimal(cost),
    )


async def begun(stores: ConversationStores, user: str) -> tuple[uuid.UUID, uuid.UUID]:
    turn_id = uuid.uuid4()
    start = await stores.store.begin_turn(
        user, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=10, title="t", lease_seconds=60
    )
    return start.conversation.id, turn_id


async def totals(stores: ConversationStores, user: str) -> UsageTotals:
    now = utcnow()
    found, _ = await stores.usage.totals(user, now - timedelta(hours=1), now + timedelta(hours=1), UsageGrouping.DAY)
    return found


async def test_a_turns_steps_and_its_end_record_their_calls_as_the_users_and_the_turns(
    stores: ConversationStores,
) -> None:
    alice = new_user()
    conversation_id, turn_id = await begun(stores, alice)
    lookup = ToolCall("call_1", "list_tasks", {})
    first, second = call(1200, 30, cached=1024), call(1300, 12, written=7, cost="0.002")

    await stores.store.append_turn(
        alice, conversation_id, [ChatMessage.assistant("", (lookup,))], turn_id=turn_id, holder=turn_id, usage=[first]
    )
    await stores.store.append_turn(
        alice,
        conversation_id,
        [ChatMessage.tool_result(lookup, ToolResult(result=[]))],
        turn_id=turn_id,
        holder=turn_id,
    )
    await stores.store.finish_turn(
        alice, conversation_id, [ChatMessage.assistant("Nothing to do.")], turn_id=turn_id, usage=[second]
    )

    expected = UsageTotals(2500, 42, 1024, 7, 2, Decimal("0.003"))
    assert await totals(stores, alice) == expected
    assert await stores.usage.turn_totals(alice, turn_id, utcnow() - timedelta(hours=1)) == expected
    assert await stores.usage.turn_totals(alice, uuid.uuid4(), utcnow() - timedelta(hours=1)) == UsageTotals()
    assert await stores.usage.tokens_since(alice, utcnow() - timedelta(hours=1)) == 2542
    _, groups = await stores.usage.totals(
        alice, utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=1), UsageGrouping.CONVERSATION
    )
    assert [g.key for g in groups] == [str(conversation_id)]
    assert await totals(stores, new_user()) == UsageTotals(cost_usd=Decimal(0))


async def test_calls_go_with_pending_approvals_a_turn_kept_open_and_alone(stores: ConversationStores) -> None:
    alice = new_user()
    conversation_id, turn_id = await begun(stores, alice)
    delete = ToolCall("call_1", "delete_task", {"task_id": 3})
    asked = ChatMessage.assistant("", (delete,))
    pending = ToolApproval(delete.id, delete.name, delete.arguments, conversation_id, turn_id, asked.id, utcnow())

    await stores.store.append_turn(
        alice, conversation_id, [asked], turn_id=turn_id, holder=turn_id, approvals=[pending], usage=[call(10, 1)]
    )
    await stores.store.append_turn(alice, conversation_id, (), turn_id=turn_id, holder=turn_id, usage=[call(20, 0)])
    await stores.store.finish_turn(
        alice, conversation_id, (), turn_id=turn_id, keep_open=True, usage=[call(30, 2, cost=None)]
    )

    assert await totals(stores, alice) == UsageTotals(60, 3, 0, 0, 3, None)


async def test_a_refused_write_records_none_of_its_calls(stores: ConversationStores) -> None:
    alice, bob = new_user(), new_user()
    conversation_id, turn_id = await begun(stores, alice)
    intruder = uuid.uuid4()

    with pytest.raises(LeaseLost):
        await stores.store.append_turn(
            alice, conversation_id, [ChatMessage.assistant("x")], turn_id=intruder, holder=intruder, usage=[call(5, 5)]
        )
    with pytest.raises(LeaseLost):
        await stores.store.finish_turn(
            alice, conversation_id, [ChatMessage.assistant("x")], turn_id=intruder, usage=[call(5, 5)]
        )
    with pytest.raises(ConversationNotFound):
        await stores.store.finish_turn(
            bob, conversation_id, [ChatMessage.assistant("x")], turn_id=turn_id, usage=[call(5, 5)]
        )

    assert await totals(stores, alice) == UsageTotals(cost_usd=Decimal(0))
    assert await totals(stores, bob) == UsageTotals(cost_usd=Decimal(0))
