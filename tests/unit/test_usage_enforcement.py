"""Budgets enforced by ChatService before every model call, on the in-memory fakes.

A user over budget is refused before anything is stored (BudgetExhausted: HTTP 429); a budget, or
``max_turn_tokens``, that runs out between two tool steps ends the turn honestly: the tools' results stay stored and
in the reply, the reply says why it stopped, every call in the history has its result. A hypothesis property runs
random turns, on two replicas (each with its own policy over the one database) and across budget windows: what is
recorded is what the model reported, and no call starts once what the user had spent — what was stored when its
turn began, and what its own process spent since — reaches the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcore.errors import BudgetExhausted
from chatcore.fakes import (
    FunctionAgent,
    InMemoryChatDatabase,
    InMemoryConversationStore,
    InMemoryToolRegistry,
    InMemoryUsageStore,
    StaticTokenVerifier,
)
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    Principal,
    ReplyStatus,
    Role,
    ToolCall,
    ToolSpec,
    Usage,
)
from chatcore.service import ChatPolicy, ChatService
from chatcore.usage import BudgetPeriod, StoredUsagePolicy, TokenBudget, UsageGrouping, UsageTotals
from tests.stores import claims_of, reader_of, stored_history

ALICE = Principal("alice")
NOTE = ToolSpec("note", "Write a note", {"type": "object"})
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def steps_of(request: AgentRequest) -> tuple[str, int]:
    """The turn's instruction (its user message) and how many model steps it has taken so far."""
    last_user = max(i for i, m in enumerate(request.messages) if m.role is Role.USER)
    after = request.messages[last_user + 1 :]
    return request.messages[last_user].content, sum(1 for m in after if m.role is Role.ASSISTANT)


def note_taker(tokens: int) -> FunctionAgent:
    """'notes N': N steps that each call ``note``, then an answer; every step costs ``tokens`` (input 3/4)."""

    def answer(request: AgentRequest) -> AgentResponse:
        instruction, step = steps_of(request)
        usage = Usage(tokens * 3 // 4, tokens - tokens * 3 // 4)
        words = instruction.split()
        if words[0] == "notes" and step < int(words[1]):
            return AgentResponse("", (ToolCall(f"{uuid.uuid4().hex[:8]}", "note", {"n": step}),), usage=usage)
        return AgentResponse(f"done after {step} steps", usage=usage)

    return FunctionAgent(answer)


@dataclass
class World:
    service: ChatService
    store: InMemoryConversationStore
    usage: InMemoryUsageStore
    tools: InMemoryToolRegistry
    agent: FunctionAgent
    clock: Clock


def world(
    budget: str | None,
    *,
    tokens: int = 100,
    max_turn_tokens: int | None = None,
    database: InMemoryChatDatabase | None = None,
) -> World:
    clock = Clock()
    store = InMemoryConversationStore(database or InMemoryChatDatabase(clock=clock))
    usage = InMemoryUsageStore(store.database)
    tools = InMemoryToolRegistry()

    async def note(principal: Principal, arguments: object) -> object:
        return {"noted": True}

    tools.register(NOTE, note)
    agent = note_taker(tokens)
    service = ChatService(
        store=store,
        claims=claims_of(store),
        agent=agent,
        verifier=StaticTokenVerifier(),
        tools=tools,
        policy=ChatPolicy(max_turn_tokens=max_turn_tokens),
        clock=clock,
        usage_policy=StoredUsagePolicy(usage, TokenBudget.parse(budget)),
        usage_store=usage,
    )
    return World(service, store, usage, tools, agent, clock)


def tool_pairs_are_whole(messages: Sequence[object]) -> bool:
    calls = {c.id for m in messages for c in getattr(m, "tool_calls", ())}
    results = {getattr(m, "tool_call_id", None) for m in messages if getattr(m, "role", None) is Role.TOOL}
    return calls == results


async def test_a_user_over_budget_is_refused_before_anything_is_stored_until_the_window_resets() -> None:
    w = world("250/hour")
    spent = await w.service.send(ALICE, "notes 2")  # 3 calls x 100 tokens: the last call started at 200 < 250
    assert spent.usage == UsageTotals(225, 75, model_calls=3, cost_usd=None)
    w.clock.now += timedelta(minutes=20)

    with pytest.raises(BudgetExhausted) as refused:
        await w.service.send(ALICE, "hello")

    assert refused.value.detail == "token budget exhausted"
    assert refused.value.retry_after == 40 * 60  # seconds until 10:00, when the hour's window ends
    assert refused.value.resets_at == START + timedelta(hours=1)
    assert len(w.store.database.conversations) == 1  # the refused turn stored nothing
    assert len(w.agent.requests) == 3
    assert await w.service.send(Principal("bob"), "hello")  # another user's budget is their own

    w.clock.now = START + timedelta(hours=1)
    reset = await w.service.send(ALICE, "hello")
    assert reset.response == "done after 0 steps"


async def test_a_budget_that_runs_out_between_tool_steps_ends_the_turn_honestly() -> None:
    w = world("250/day")

    reply = await w.service.send(ALICE, "notes 5")

    assert len(w.agent.requests) == 3  # 0, 100, 200 spent before each call; at 300 no call starts
    assert reply.status is ReplyStatus.COMPLETE
    assert "token budget ran out" in reply.response
    assert [r.name for r in reply.tool_calls] == ["note", "note", "note"]
    assert all(r.result == {"noted": True} for r in reply.tool_calls)
    assert reply.usage is not None
    assert reply.usage.model_calls == 3
    history = await stored_history(reader_of(w.store), "alice", reply.conversation_id, 100)
    assert tool_pairs_are_whole(history)
    assert history[-1].content == reply.response
    assert len(w.tools.calls) == 3  # what the tools did is real, and reported
    totals, _ = await w.usage.totals("alice", START, START + timedelta(days=1), UsageGrouping.DAY)
    assert totals.tokens == 300


async def test_max_turn_tokens_stops_the_tool_loop_the_same_way() -> None:
    w = world(None, tokens=100, max_turn_tokens=200)

    reply = await w.service.send(ALICE, "notes 5")

    assert len(w.agent.requests) == 2
    assert "limit of 200 tokens" in reply.response
    assert len(reply.tool_calls) == 2
    history = await stored_history(reader_of(w.store), "alice", reply.conversation_id, 100)
    assert tool_pairs_are_whole(history)
    again = await w.service.send(ALICE, "hello", reply.conversation_id)  # the next turn has its own limit
    assert again.response == "done after 0 steps"


async def test_without_a_budget_the_policy_never_reads_the_store() -> None:
    w = world(None)
    w.store.database.available = False  # any read of the usage store would raise StoreUnavailable
    meter = await w.service.meter_for(ALICE)
    await meter.admit(w.clock())
    meter.close()


# --- the property -------------------------------------------------------------------------------------------------


@dataclass
class CallSeen:
    replica: int
    turn: str
    tokens: int
    started: int
    """The event number when it started; ``ended`` when it returned."""
    ended: int = -1
    window: datetime = START


@dataclass
class Trace:
    events: int = 0
    calls: list[CallSeen] = field(default_factory=list)
    turn_began: dict[str, int] = field(default_factory=dict)
    turn_ended: dict[str, int] = field(default_factory=dict)

    def tick(self) -> int:
        self.events += 1
        return self.events


turn_plans = st.lists(  # rounds of turns run together: (replica, steps, tokens per step), then minutes to move on
    st.tuples(
        st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(1, 400)), min_size=1, max_size=3),
        st.integers(0, 50),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=turn_plans, limit=st.integers(1, 1500))
def test_recorded_totals_are_the_calls_and_no_call_starts_at_or_over_the_limit(
    plan: list[tuple[list[tuple[int, int, int]], int]], limit: int
) -> None:
    asyncio.run(_run_plan(plan, limit))


async def _run_plan(plan: list[tuple[list[tuple[int, int, int]], int]], limit: int) -> None:
    clock = Clock()
    database = InMemoryChatDatabase(clock=clock)
    usage = InMemoryUsageStore(database)
    trace = Trace()
    costs: dict[str, int] = {}

    async def answer(request: AgentRequest, replica: int) -> AgentResponse:
        instruction, step = steps_of(request)
        turn, steps = instruction.split()[0], int(instruction.split()[1])
        seen = CallSeen(replica, turn, costs[turn], trace.tick(), window=clock().replace(minute=0))
        trace.calls.append(seen)
        await asyncio.sleep(0)  # let the other turns of the round run meanwhile
        seen.ended = trace.tick()
        usage_now = Usage(costs[turn] // 2, costs[turn] - costs[turn] // 2)
        if step < steps:
            return AgentResponse("", (ToolCall(uuid.uuid4().hex[:8], "note", {}),), usage=usage_now)
        return AgentResponse("done", usage=usage_now)

    tools = InMemoryToolRegistry()

    async def note(principal: Principal, arguments: object) -> object:
        await asyncio.sleep(0)
        return {"noted": True}

    tools.register(NOTE, note)
    replicas = []
    for replica in (0, 1):
        store = InMemoryConversationStore(database)

        def bound(request: AgentRequest, replica: int = replica) -> object:
            return answer(request, replica)

        replicas.append(
            ChatService(
                store=store,
                claims=claims_of(store),
                agent=FunctionAgent(bound),  # type: ignore[arg-type]
                verifier=StaticTokenVerifier(),
                tools=tools,
                clock=clock,
                usage_policy=StoredUsagePolicy(usage, TokenBudget(limit, BudgetPeriod.HOUR)),
            )
        )

    async def turn(name: str, replica: int, steps: int) -> None:
        trace.turn_began[name] = trace.tick()
        with contextlib.suppress(BudgetExhausted):
            await replicas[replica].send(ALICE, f"{name} {steps}")
        trace.turn_ended[name] = trace.tick()

    count = 0
    for turns, minutes in plan:
        batch = []
        for replica, steps, tokens in turns:
            count += 1
            name = f"t{count}"
            costs[name] = tokens
            batch.append(turn(name, replica, steps))
        await asyncio.gather(*batch)
        clock.now += timedelta(minutes=minutes)

    # What is recorded is exactly what the model reported.
    totals, _ = await usage.totals("alice", START - timedelta(days=1), clock() + timedelta(days=1), UsageGrouping.DAY)
    assert totals.tokens == sum(c.tokens for c in trace.calls)
    assert totals.model_calls == len(trace.calls)

    # No call starts once what its replica knew the user had spent in the window reached the limit: every call of
    # a turn that had ended when this call's turn began (stored, so read as the turn began), and every call of its
    # own replica that had returned before it started. Calls still in flight elsewhere are the documented overshoot.
    for call in trace.calls:
        began = trace.turn_began[call.turn]
        known = sum(
            other.tokens
            for other in trace.calls
            if other is not call
            and other.window == call.window
            and (
                trace.turn_ended.get(other.turn, 10**9) < began
                or (other.replica == call.replica and other.ended < call.started)
            )
        )
        assert known < limit, (call, known, limit)
