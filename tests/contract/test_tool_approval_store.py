"""Tool calls that wait for approval, and turns stored as they happen: the same contract on every store adapter.

The in-memory fake, SQLite and PostgreSQL (with the turn's statements on asyncpg and through SQLAlchemy Core,
``postgres_core``) store pending calls, decide them, start approved ones and read a turn back alike, through
the shared store fixtures of ``conftest.py``. Fresh user ids per test.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chatcore.approvals import EXPIRED, SUPERSEDED
from chatcore.errors import (
    ConversationBusy,
    ConversationNotFound,
    DecisionConflict,
    LeaseLost,
    ToolCallNotFound,
    TurnStillOpen,
)
from chatcore.model import ChatMessage, Message, Role, ToolApproval, ToolCall, ToolDecision, ToolResult
from chatcore.ports import ConversationReader, ConversationStore, TurnClaimStore
from tests.stores import stored_history

pytestmark = pytest.mark.postgres_core
LEASE = 60.0


@pytest.fixture
def alice() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.fixture
def bob() -> str:
    return f"user-{uuid.uuid4().hex}"


def later(seconds: float = 3600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def earlier(seconds: float = 3600) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


class Turn:
    """A turn that asked for ``calls`` in one step, the ones named in ``waiting`` stored as pending."""

    def __init__(self, conversation_id: uuid.UUID, turn_id: uuid.UUID, asked: Message, stored: tuple[Message, ...]):
        self.conversation_id, self.turn_id, self.asked, self.stored = conversation_id, turn_id, asked, stored


async def waiting_turn(
    store: ConversationStore,
    user: str,
    conversation_id: uuid.UUID | None = None,
    *,
    calls: tuple[str, ...] = ("lookup", "delete"),
    waiting: tuple[str, ...] = ("delete",),
) -> Turn:
    """Begin a turn, store its step (the calls, some pending) and the result of each call that runs, and end it
    waiting: what ChatService does when a step asks for a call that needs approval."""
    turn_id = uuid.uuid4()
    start = await store.begin_turn(
        user,
        conversation_id,
        ChatMessage.user("delete the meeting"),
        turn_id=turn_id,
        history_limit=50,
        title="t",
        lease_seconds=LEASE,
    )
    conversation = start.conversation.id
    asked = ChatMessage.assistant("", [ToolCall(f"{turn_id.hex[:6]}-{name}", name, {"id": 3}) for name in calls])
    pending = [
        ToolApproval(call.id, call.name, call.arguments, conversation, turn_id, asked.id, datetime.now(UTC))
        for call in asked.tool_calls
        if call.name in waiting
    ]
    [stored_ask] = await store.append_turn(
        user, conversation, [asked], turn_id=turn_id, holder=turn_id, approvals=pending
    )
    results = [
        ChatMessage.tool_result(call, ToolResult(result={"ok": call.name}))
        for call in asked.tool_calls
        if call.name not in waiting
    ]
    stored_results = await store.append_turn(user, conversation, results, turn_id=turn_id, holder=turn_id)
    await store.finish_turn(user, conversation, [], turn_id=turn_id, keep_open=True)
    return Turn(conversation, turn_id, stored_ask, (start.user_message, stored_ask, *stored_results))


def call_id(turn: Turn, name: str) -> str:
    return next(c.id for c in turn.asked.tool_calls if c.name == name)


async def test_steps_stored_as_they_happen_belong_to_the_turn_and_keep_the_lease(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    turn = await waiting_turn(store, alice)

    history = await stored_history(reader, alice, turn.conversation_id, 10)
    assert history == turn.stored
    assert [m.role for m in history] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert [m.seq for m in history] == [1, 2, 3]
    assert {m.turn_id for m in history} == {turn.turn_id}
    assert await store.turn_messages(alice, turn.conversation_id, turn.turn_id) == turn.stored


async def test_appending_under_another_live_lease_is_lease_lost_and_stores_nothing(
    store: ConversationStore, reader: ConversationReader, alice: str
) -> None:
    turn_id = uuid.uuid4()
    start = await store.begin_turn(
        alice, None, ChatMessage.user("hi"), turn_id=turn_id, history_limit=5, lease_seconds=LEASE
    )
    with pytest.raises(LeaseLost):
        await store.append_turn(
            alice, start.conversation.id, [ChatMessage.assistant("x")], turn_id=turn_id, holder=uuid.uuid4()
        )
    assert await stored_history(reader, alice, start.conversation.id, 5) == (start.user_message,)


async def test_pending_calls_are_listed_and_the_open_turn_keeps_new_turns_out(
    store: ConversationStore, reader: ConversationReader, alice: str, bob: str
) -> None:
    turn = await waiting_turn(store, alice)

    [approval] = await store.list_approvals(alice, turn.conversation_id)
    assert (approval.tool_call_id, approval.name, dict(approval.arguments)) == (
        call_id(turn, "delete"),
        "delete",
        {"id": 3},
    )
    assert (approval.conversation_id, approval.turn_id, approval.message_id) == (
        turn.conversation_id,
        turn.turn_id,
        turn.asked.id,
    )
    assert approval.pending
    assert (approval.reason, approval.decided_at, approval.started_at) == (None, None, None)
    assert await store.list_approvals(alice, turn.conversation_id, message_ids=[uuid.uuid4()]) == ()
    [summary] = await reader.list_conversations(alice, limit=5)
    assert summary.awaiting_approval
    with pytest.raises(TurnStillOpen) as still_open:
        await store.begin_turn(
            alice,
            turn.conversation_id,
            ChatMessage.user("next"),
            turn_id=uuid.uuid4(),
            history_limit=5,
            lease_seconds=LEASE,
        )
    assert still_open.value.turn_id == turn.turn_id
    assert len(await stored_history(reader, alice, turn.conversation_id, 10)) == 3, "nothing stored"
    with pytest.raises(ConversationNotFound):
        await store.list_approvals(bob, turn.conversation_id)


async def test_decisions_are_stored_once_and_a_different_one_is_a_conflict(
    store: ConversationStore, alice: str
) -> None:
    turn = await waiting_turn(store, alice, calls=("a", "b"), waiting=("a", "b"))
    a, b = call_id(turn, "a"), call_id(turn, "b")

    first = await store.decide_tool_calls(alice, turn.conversation_id, [ToolDecision(a, True)], expire_before=earlier())
    assert {x.tool_call_id: x.approved for x in first} == {a: True, b: None}
    decided_at = next(x.decided_at for x in first if x.tool_call_id == a)
    assert decided_at is not None

    again = await store.decide_tool_calls(
        alice,
        turn.conversation_id,
        [ToolDecision(a, True, "yes"), ToolDecision(b, False, "no")],
        expire_before=earlier(),
    )
    by_id = {x.tool_call_id: x for x in again}
    assert (by_id[a].approved, by_id[a].reason, by_id[a].decided_at) == (True, None, decided_at), "left as it was"
    assert (by_id[b].approved, by_id[b].reason) == (False, "no")

    with pytest.raises(DecisionConflict):
        await store.decide_tool_calls(alice, turn.conversation_id, [ToolDecision(b, True)], expire_before=earlier())
    assert {x.tool_call_id: x.approved for x in await store.list_approvals(alice, turn.conversation_id)} == {
        a: True,
        b: False,
    }


async def test_a_batch_with_an_unknown_or_foreign_call_stores_nothing(
    store: ConversationStore, alice: str, bob: str
) -> None:
    turn = await waiting_turn(store, alice)
    delete = call_id(turn, "delete")
    bobs = await waiting_turn(store, bob)

    for unknown in ("no-such-call", call_id(turn, "lookup"), call_id(bobs, "delete")):
        with pytest.raises(ToolCallNotFound):
            await store.decide_tool_calls(
                alice,
                turn.conversation_id,
                [ToolDecision(delete, True), ToolDecision(unknown, True)],
                expire_before=earlier(),
            )
    with pytest.raises(ConversationNotFound):
        await store.decide_tool_calls(bob, turn.conversation_id, [ToolDecision(delete, True)], expire_before=earlier())
    assert all(a.pending for a in await store.list_approvals(alice, turn.conversation_id))


async def test_decisions_naming_calls_of_two_turns_are_a_conflict(store: ConversationStore, alice: str) -> None:
    first = await waiting_turn(store, alice)
    await store.deny_pending(alice, first.conversation_id, reason=SUPERSEDED)
    await store.append_turn(
        alice,
        first.conversation_id,
        [ChatMessage.tool_result(first.asked.tool_calls[1], ToolResult(error="denied"))],
        turn_id=first.turn_id,
        holder=uuid.uuid4(),
        close=True,
    )
    second = await waiting_turn(store, alice, first.conversation_id)
    decisions = [ToolDecision(call_id(first, "delete"), False), ToolDecision(call_id(second, "delete"), True)]
    with pytest.raises(DecisionConflict):
        await store.decide_tool_calls(alice, first.conversation_id, decisions, expire_before=earlier())
    assert [a.approved for a in await store.list_approvals(alice, first.conversation_id)] == [False, None]


async def test_calls_pending_before_the_cutoff_are_denied_as_expired_first(
    store: ConversationStore, alice: str
) -> None:
    turn = await waiting_turn(store, alice)
    delete = call_id(turn, "delete")

    with pytest.raises(DecisionConflict, match="expired"):
        await store.decide_tool_calls(alice, turn.conversation_id, [ToolDecision(delete, True)], expire_before=later())
    # All or nothing: the refused batch did not store the expiry either; denying it agrees with the expiry.
    [approval] = await store.decide_tool_calls(
        alice, turn.conversation_id, [ToolDecision(delete, False)], expire_before=later()
    )
    assert (approval.approved, approval.reason) == (False, EXPIRED)


async def test_deny_pending_denies_only_what_is_pending_and_old_enough_and_only_the_owners(
    store: ConversationStore, reader: ConversationReader, alice: str, bob: str
) -> None:
    turn = await waiting_turn(store, alice, calls=("a", "b"), waiting=("a", "b"))
    await store.decide_tool_calls(
        alice, turn.conversation_id, [ToolDecision(call_id(turn, "a"), True)], expire_before=earlier()
    )

    await store.deny_pending(bob, turn.conversation_id, reason="not yours")
    await store.deny_pending(alice, turn.conversation_id, reason=EXPIRED, requested_before=earlier())
    assert [a.approved for a in await store.list_approvals(alice, turn.conversation_id)].count(None) == 1

    await store.deny_pending(alice, turn.conversation_id, reason=SUPERSEDED)
    by_id = {a.tool_call_id: a for a in await store.list_approvals(alice, turn.conversation_id)}
    assert (by_id[call_id(turn, "a")].approved, by_id[call_id(turn, "a")].reason) == (True, None)
    assert (by_id[call_id(turn, "b")].approved, by_id[call_id(turn, "b")].reason) == (False, SUPERSEDED)
    assert not (await reader.list_conversations(alice, limit=1))[0].awaiting_approval


async def test_resume_takes_the_lease_and_reads_the_turn_its_approvals_and_the_history_before_it(
    store: ConversationStore, alice: str
) -> None:
    start = await store.begin_turn(alice, None, ChatMessage.user("earlier"), turn_id=uuid.uuid4(), history_limit=5)
    [answer] = await store.finish_turn(
        alice, start.conversation.id, [ChatMessage.assistant("ok")], turn_id=uuid.uuid4()
    )
    turn = await waiting_turn(store, alice, start.conversation.id)
    holder = uuid.uuid4()

    resumed = await store.resume_turn(
        alice, turn.conversation_id, turn.turn_id, holder=holder, lease_seconds=LEASE, history_limit=5
    )

    assert resumed.open
    assert resumed.turn_id == turn.turn_id
    assert resumed.turn == turn.stored
    assert resumed.history == (start.user_message, answer)
    assert [a.tool_call_id for a in resumed.approvals] == [call_id(turn, "delete")]
    assert resumed.conversation.id == turn.conversation_id
    with pytest.raises(ConversationBusy):
        await store.resume_turn(
            alice, turn.conversation_id, turn.turn_id, holder=uuid.uuid4(), lease_seconds=LEASE, history_limit=5
        )
    with pytest.raises(ConversationNotFound):
        await store.resume_turn(
            "someone-else",
            turn.conversation_id,
            turn.turn_id,
            holder=uuid.uuid4(),
            lease_seconds=LEASE,
            history_limit=5,
        )


async def test_approved_calls_are_started_once_and_only_under_the_holders_lease(
    store: ConversationStore, alice: str
) -> None:
    turn = await waiting_turn(store, alice, calls=("a", "b"), waiting=("a", "b"))
    a, b = call_id(turn, "a"), call_id(turn, "b")
    keys = [(turn.asked.id, a), (turn.asked.id, b)]
    await store.decide_tool_calls(
        alice, turn.conversation_id, [ToolDecision(a, True), ToolDecision(b, False)], expire_before=earlier()
    )
    holder = uuid.uuid4()
    assert await store.start_tool_calls(alice, turn.conversation_id, keys, holder=holder) == (), "no lease held"

    await store.resume_turn(
        alice, turn.conversation_id, turn.turn_id, holder=holder, lease_seconds=LEASE, history_limit=0
    )
    assert await store.start_tool_calls(alice, turn.conversation_id, keys, holder=holder) == ((turn.asked.id, a),)
    assert await store.start_tool_calls(alice, turn.conversation_id, keys, holder=holder) == ()
    [started] = [x for x in await store.list_approvals(alice, turn.conversation_id) if x.tool_call_id == a]
    assert started.started_at is not None


async def test_finishing_the_turn_closes_it_and_a_new_turn_may_begin(
    store: ConversationStore, claims: TurnClaimStore, alice: str
) -> None:
    turn = await waiting_turn(store, alice)
    holder = uuid.uuid4()
    await store.decide_tool_calls(
        alice, turn.conversation_id, [ToolDecision(call_id(turn, "delete"), False)], expire_before=earlier()
    )
    await store.resume_turn(
        alice, turn.conversation_id, turn.turn_id, holder=holder, lease_seconds=LEASE, history_limit=0
    )
    result = ChatMessage.tool_result(turn.asked.tool_calls[1], ToolResult(error="denied by the user"))
    await store.append_turn(alice, turn.conversation_id, [result], turn_id=turn.turn_id, holder=holder)
    [answer] = await store.finish_turn(
        alice, turn.conversation_id, [ChatMessage.assistant("kept it")], turn_id=turn.turn_id, holder=holder
    )

    assert answer.turn_id == turn.turn_id
    reader = uuid.uuid4()
    resumed = await store.resume_turn(
        alice, turn.conversation_id, turn.turn_id, holder=reader, lease_seconds=LEASE, history_limit=0
    )
    await claims.release_turn(alice, reader, conversation_id=turn.conversation_id, idempotency_key=None)
    assert not resumed.open
    assert [m.content for m in resumed.turn][-1] == "kept it"
    next_turn = await store.begin_turn(
        alice,
        turn.conversation_id,
        ChatMessage.user("thanks"),
        turn_id=uuid.uuid4(),
        history_limit=10,
    )
    assert [m.content for m in next_turn.history][-1] == "kept it"
