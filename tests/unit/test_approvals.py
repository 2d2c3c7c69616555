"""A human in the loop: ChatService with the in-memory adapters, tool calls that wait for the user's approval.

The model here is a function of the request, stateless like a real one: "delete 3" makes it look tasks up
(a call that runs) and delete task 3 (a call that needs approval) in one step, then answer with what the
results said. Tools record every run, so a test sees what ran, how often, and with which arguments.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcore import (
    AgentRequest,
    AgentResponse,
    ChatPolicy,
    ChatService,
    ConversationBusy,
    ConversationNotFound,
    Principal,
    Role,
    ToolCall,
    ToolSpec,
)
from chatcore.approvals import DENIED, EXPIRED, SUPERSEDED
from chatcore.conversations import ConversationHistory
from chatcore.errors import DecisionConflict, InvalidRequest, ToolCallNotFound
from chatcore.fakes import (
    FunctionAgent,
    InMemoryConversationStore,
    InMemoryToolRegistry,
    InMemoryTurnEventStore,
    InMemoryUsageStore,
    StaticTokenVerifier,
)
from chatcore.history import INTERRUPTED_ERROR
from chatcore.model import ChatReply, JsonValue, ReplyStatus, ToolDecision
from chatcore.streamed_turns import TurnStreamer
from tests.stores import claims_of, reader_of, stored_history

ALICE = Principal("alice", email="alice@example.com")
BOB = Principal("bob")
LOOKUP = ToolSpec("lookup", "Look tasks up", {"type": "object"})
DELETE = ToolSpec("delete", "Delete a task", {"type": "object", "properties": {"id": {"type": "integer"}}})
ERASE = ToolSpec("erase", "Erase everything", {"type": "object"}, requires_approval=True)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def model(request: AgentRequest) -> AgentResponse:
    """'delete N' -> lookup + delete(N) at once; 'erase' -> erase; 'delete N then M' -> a second approval step after
    the first; once results are in, an answer quoting them. Anything else: a plain answer."""
    last_user = max(i for i, m in enumerate(request.messages) if m.role is Role.USER)
    instruction = request.messages[last_user].content
    after = request.messages[last_user + 1 :]
    tag = request.messages[last_user].id.hex[:8]
    steps = sum(1 for m in after if m.role is Role.ASSISTANT)
    words = instruction.split()
    if words[0] == "erase" and steps == 0:
        return AgentResponse("", (ToolCall(f"{tag}-erase", "erase", {}),))
    if words[0] == "delete" and steps == 0:
        calls = (ToolCall(f"{tag}-lookup", "lookup", {}), ToolCall(f"{tag}-delete", "delete", {"id": int(words[1])}))
        return AgentResponse("Let me check.", calls)
    if words[0] == "delete" and steps == 1 and len(words) == 4:
        return AgentResponse("", (ToolCall(f"{tag}-delete2", "delete", {"id": int(words[3])}),))
    results = [m.content for m in after if m.role is Role.TOOL]
    return AgentResponse("results: " + " | ".join(results) if results else f"you said {instruction}")


@dataclass
class World:
    service: ChatService
    store: InMemoryConversationStore
    tools: InMemoryToolRegistry
    agent: FunctionAgent
    clock: Clock
    streamer: TurnStreamer
    runs: list[tuple[str, str, dict[str, JsonValue]]] = field(default_factory=list)

    def ran(self, name: str) -> list[dict[str, JsonValue]]:
        return [arguments for _, tool, arguments in self.tools.calls if tool == name]

    async def say(self, text: str, conversation_id: uuid.UUID | None = None, who: Principal = ALICE) -> ChatReply:
        return await self.service.send(who, text, conversation_id)

    async def decide(
        self, conversation_id: uuid.UUID, *decisions: tuple[str, bool] | tuple[str, bool, str], who: Principal = ALICE
    ) -> ChatReply:
        return await self.service.decide(who, conversation_id, [ToolDecision(*d) for d in decisions])


def world(**policy: object) -> World:
    clock = Clock()
    store = InMemoryConversationStore(clock=clock)
    tools = InMemoryToolRegistry()

    async def lookup(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        return [{"id": 3, "title": "Team meeting"}]

    async def delete(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        return {"deleted": arguments["id"], "by": principal.user_id}

    async def erase(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        return {"erased": True}

    tools.register(LOOKUP, lookup)
    tools.register(DELETE, delete)
    tools.register(ERASE, erase)
    agent = FunctionAgent(model)
    settings: dict[str, object] = {"approval_tools": frozenset({"delete"}), **policy}
    service = ChatService(
        store=store,
        claims=claims_of(store),
        agent=agent,
        verifier=StaticTokenVerifier(),
        tools=tools,
        policy=ChatPolicy(**settings),  # type: ignore[arg-type]
        clock=clock,
        usage_store=InMemoryUsageStore(store.database),
    )
    streamer = TurnStreamer(service, InMemoryTurnEventStore(store.database))
    return World(service, store, tools, agent, clock, streamer)


def pairs_are_whole(request: AgentRequest) -> bool:
    """Every call the model is shown is followed by exactly one result before the next non-tool message."""
    open_calls: list[str] = []
    for message in request.messages:
        if message.role is Role.TOOL:
            if message.tool_call_id not in open_calls:
                return False
            open_calls.remove(message.tool_call_id)
            continue
        if open_calls:
            return False
        open_calls = [call.id for call in message.tool_calls]
    return not open_calls


# --- pending ------------------------------------------------------------------------------------------------------


async def test_a_call_that_needs_approval_is_stored_pending_and_not_run_while_the_others_in_its_step_run() -> None:
    w = world()
    reply = await w.say("delete 3")

    assert reply.status is ReplyStatus.AWAITING_APPROVAL
    [pending] = reply.pending_approvals
    assert (pending.name, dict(pending.arguments)) == ("delete", {"id": 3})
    assert [(r.name, r.result) for r in reply.tool_calls] == [("lookup", [{"id": 3, "title": "Team meeting"}])]
    assert w.ran("delete") == []
    assert len(w.ran("lookup")) == 1
    stored = await stored_history(reader_of(w.store), "alice", reply.conversation_id, 10)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert stored[1].id == reply.message_id
    assert reply.response == "Let me check."
    [approval] = await w.store.list_approvals("alice", reply.conversation_id)
    assert approval.pending
    assert (approval.tool_call_id, approval.message_id) == (pending.id, stored[1].id)
    summary = (await reader_of(w.store).list_conversations("alice", limit=5))[0]
    assert summary.awaiting_approval


async def test_a_tool_that_declares_it_needs_approval_waits_without_the_setting() -> None:
    w = world(approval_tools=frozenset())
    reply = await w.say("erase")
    assert [c.name for c in reply.pending_approvals] == ["erase"]
    assert w.ran("erase") == []
    done = await w.decide(reply.conversation_id, (reply.pending_approvals[0].id, True))
    assert w.ran("erase") == [{}]
    assert done.status is ReplyStatus.COMPLETE


async def test_an_approved_call_runs_with_the_stored_arguments_and_the_model_continues_the_same_turn() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id

    done = await w.decide(asked.conversation_id, (call_id, True))

    assert w.ran("delete") == [{"id": 3}]
    assert done.status is ReplyStatus.COMPLETE
    assert done.pending_approvals == ()
    assert done.response.startswith("results: ")
    assert '{"deleted": 3, "by": "alice"}' in done.response
    stored = await stored_history(reader_of(w.store), "alice", asked.conversation_id, 10)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.ASSISTANT]
    assert stored[-1].id == done.message_id
    assert {m.turn_id for m in stored} == {stored[0].turn_id}, "the continuation is the same turn"
    assert [(r.name, r.approval.approved if r.approval else None) for r in done.tool_calls] == [
        ("lookup", None),
        ("delete", True),
    ]
    assert pairs_are_whole(w.agent.requests[-1])
    assert not (await reader_of(w.store).list_conversations("alice", limit=5))[0].awaiting_approval


async def test_a_denied_call_never_runs_and_the_model_reads_the_denial_and_reason() -> None:
    w = world()
    asked = await w.say("delete 3")

    done = await w.decide(asked.conversation_id, (asked.pending_approvals[0].id, False, "I still need it"))

    assert w.ran("delete") == []
    assert f"{DENIED}: I still need it" in done.response
    [_, denied] = done.tool_calls
    assert denied.error == f"{DENIED}: I still need it"
    assert denied.approval is not None
    assert denied.approval.approved is False
    assert pairs_are_whole(w.agent.requests[-1])


async def test_partial_decisions_are_stored_and_the_turn_waits_for_the_rest() -> None:
    w = world()
    asked = await w.say("delete 3 then 4")
    first = asked.pending_approvals[0].id
    step_two = await w.decide(asked.conversation_id, (first, True))
    # The approved delete ran; the model then asked for a second delete, which waits in turn.
    assert step_two.status is ReplyStatus.AWAITING_APPROVAL
    assert [dict(c.arguments) for c in step_two.pending_approvals] == [{"id": 4}]
    assert w.ran("delete") == [{"id": 3}]

    erase_world = world(approval_tools=frozenset({"delete", "lookup"}))
    both = await erase_world.say("delete 7")
    lookup_id, delete_id = (c.id for c in both.pending_approvals)
    partial = await erase_world.decide(both.conversation_id, (delete_id, True))
    assert partial.status is ReplyStatus.AWAITING_APPROVAL
    assert [c.id for c in partial.pending_approvals] == [lookup_id]
    assert erase_world.ran("delete") == [], "nothing runs while a call of the step still waits"
    finished = await erase_world.decide(both.conversation_id, (lookup_id, False))
    assert finished.status is ReplyStatus.COMPLETE
    assert erase_world.ran("delete") == [{"id": 7}]
    assert erase_world.ran("lookup") == []


async def test_the_same_decisions_twice_run_nothing_twice_and_get_the_same_reply() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id
    first = await w.decide(asked.conversation_id, (call_id, True))
    again = await w.decide(asked.conversation_id, (call_id, True))
    assert again == first
    assert w.ran("delete") == [{"id": 3}]
    assert len(w.agent.requests) == 2


async def test_two_identical_decisions_at_once_run_the_call_once_and_both_get_the_same_reply() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id
    one, two = await asyncio.gather(
        w.decide(asked.conversation_id, (call_id, True)), w.decide(asked.conversation_id, (call_id, True))
    )
    assert one == two
    assert one.status is ReplyStatus.COMPLETE
    assert w.ran("delete") == [{"id": 3}]


async def test_a_different_decision_is_a_conflict_and_unknown_or_foreign_calls_are_not_found() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id
    await w.decide(asked.conversation_id, (call_id, True))

    with pytest.raises(DecisionConflict):
        await w.decide(asked.conversation_id, (call_id, False))
    with pytest.raises(ToolCallNotFound):
        await w.decide(asked.conversation_id, ("no-such-call", True))
    lookup_id = asked.tool_calls[0].id
    with pytest.raises(ToolCallNotFound):  # a call that never needed approval is not pending either
        await w.decide(asked.conversation_id, (lookup_id, True))
    with pytest.raises(ConversationNotFound):
        await w.decide(asked.conversation_id, (call_id, True), who=BOB)
    bobs = await w.say("delete 5", who=BOB)
    with pytest.raises(ToolCallNotFound):  # Bob's call, named in Alice's conversation
        await w.decide(asked.conversation_id, (bobs.pending_approvals[0].id, True))
    with pytest.raises(ConversationNotFound):
        await w.decide(bobs.conversation_id, (bobs.pending_approvals[0].id, True))
    assert w.ran("delete") == [{"id": 3}]


@pytest.mark.parametrize(
    "decisions",
    [
        [],
        [ToolDecision("a", True), ToolDecision("a", False)],
        [ToolDecision("", True)],
        [ToolDecision("a", True, "x" * 2001)],
        [ToolDecision("a", True, "nul\x00")],
        [ToolDecision("a" * 256, True)],
    ],
)
async def test_malformed_decisions_are_refused_before_anything_is_stored(decisions: list[ToolDecision]) -> None:
    w = world()
    asked = await w.say("delete 3")
    with pytest.raises(InvalidRequest):
        await w.service.decide(ALICE, asked.conversation_id, decisions)
    assert (await w.store.list_approvals("alice", asked.conversation_id))[0].pending


# --- supersede and expiry -----------------------------------------------------------------------------------------


async def test_a_new_message_denies_the_pending_calls_as_superseded_and_its_turn_runs() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id

    reply = await w.say("never mind", asked.conversation_id)

    assert reply.status is ReplyStatus.COMPLETE
    assert reply.response == "you said never mind"
    assert w.ran("delete") == []
    [approval] = await w.store.list_approvals("alice", asked.conversation_id)
    assert (approval.approved, approval.reason) == (False, SUPERSEDED)
    request = w.agent.requests[-1]
    assert pairs_are_whole(request)
    [denial] = [m for m in request.messages if m.tool_call_id == call_id]
    assert SUPERSEDED in denial.content
    stored = await stored_history(reader_of(w.store), "alice", asked.conversation_id, 10)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.USER, Role.ASSISTANT]
    assert stored[3].turn_id == stored[0].turn_id, "the denial closes the first turn, before the new message"
    with pytest.raises(DecisionConflict):
        await w.decide(asked.conversation_id, (call_id, True))
    # Denying it (as the new message did) is no conflict: it answers with the closed turn's reply.
    closed = await w.decide(asked.conversation_id, (call_id, False))
    assert closed.status is ReplyStatus.INTERRUPTED
    assert w.ran("delete") == []


async def test_calls_pending_past_the_ttl_are_denied_as_expired_when_the_conversation_is_touched() -> None:
    w = world(approval_ttl_seconds=60)
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id
    history = ConversationHistory(reader_of(w.store), w.store, approval_ttl_seconds=60, clock=w.clock)
    assert (await history.conversation("alice", asked.conversation_id)).awaiting_approval

    w.clock.now += timedelta(seconds=61)
    with pytest.raises(DecisionConflict, match="expired"):
        await w.decide(asked.conversation_id, (call_id, True))
    detail = await history.conversation("alice", asked.conversation_id)
    assert not detail.awaiting_approval
    assert w.ran("delete") == []

    reply = await w.say("and now?", asked.conversation_id)
    assert reply.status is ReplyStatus.COMPLETE
    [denial] = [m for m in w.agent.requests[-1].messages if m.tool_call_id == call_id]
    assert f"{DENIED}: {EXPIRED}" in denial.content


async def test_reading_the_history_expires_old_calls_and_shows_pending_calls_and_decisions() -> None:
    w = world(approval_ttl_seconds=60)
    history = ConversationHistory(reader_of(w.store), w.store, approval_ttl_seconds=60, clock=w.clock)
    asked = await w.say("delete 3")
    page = await history.messages("alice", asked.conversation_id)
    [_, assistant] = page.items
    lookup, delete = assistant.tool_calls
    assert (lookup.approval, lookup.awaiting_approval) == (None, False)
    assert delete.awaiting_approval
    assert (delete.result, delete.error) == (None, None)

    await w.decide(asked.conversation_id, (delete.id, False, "no"))
    page = await history.messages("alice", asked.conversation_id)
    delete = page.items[1].tool_calls[1]
    assert delete.approval is not None
    assert (delete.approval.approved, delete.approval.reason) == (False, "no")
    assert delete.error == f"{DENIED}: no"

    later = await w.say("delete 4", asked.conversation_id)
    w.clock.now += timedelta(seconds=61)
    page = await history.messages("alice", later.conversation_id)
    expired = page.items[-1].tool_calls[1]
    assert expired.approval is not None
    assert expired.approval.reason == EXPIRED
    assert not expired.awaiting_approval


# --- storage as it happens, and takeovers --------------------------------------------------------------------------


async def test_each_step_and_each_result_is_stored_as_it_happens() -> None:
    w = world(approval_tools=frozenset())
    release = asyncio.Event()
    seen: list[list[Role]] = []

    async def slow_delete(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        conversation_id = next(iter(w.store.database.messages))
        seen.append([m.role for m in w.store.database.messages[conversation_id]])
        await release.wait()
        return {"deleted": arguments["id"]}

    w.tools.register(DELETE, slow_delete)
    turn = asyncio.create_task(w.say("delete 3"))
    for _ in range(100):  # until the lookup, running beside the blocked delete, has stored its result
        await asyncio.sleep(0)
        stored = next(iter(w.store.database.messages.values()), [])
        if len(stored) == 3:
            break
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert stored[2].tool_call_id is not None
    assert stored[2].tool_call_id.endswith("-lookup")
    assert seen[0][:2] == [Role.USER, Role.ASSISTANT], "the step is stored before its calls run"
    release.set()
    await turn


async def test_a_takeover_runs_an_approved_call_not_yet_started_and_never_reruns_one_that_started() -> None:
    w = world()
    asked = await w.say("delete 3")
    call_id = asked.pending_approvals[0].id
    # A replica recorded the decision, then died before running the call: a retry runs it, once.
    await w.store.decide_tool_calls(
        "alice", asked.conversation_id, [ToolDecision(call_id, True)], expire_before=w.clock.now
    )
    done = await w.decide(asked.conversation_id, (call_id, True))
    assert w.ran("delete") == [{"id": 3}]
    assert done.status is ReplyStatus.COMPLETE

    again = await w.say("delete 4", asked.conversation_id)
    second = again.pending_approvals[0].id
    await w.store.decide_tool_calls(
        "alice", asked.conversation_id, [ToolDecision(second, True)], expire_before=w.clock.now
    )
    key = next(
        (a.message_id, a.tool_call_id)
        for a in await w.store.list_approvals("alice", asked.conversation_id)
        if a.tool_call_id == second
    )
    holder = uuid.uuid4()
    await w.store.resume_turn(
        "alice", asked.conversation_id, key[0], holder=holder, lease_seconds=0.001, history_limit=0
    )
    assert await w.store.start_tool_calls("alice", asked.conversation_id, [key], holder=holder) == (key,)
    # ...and that replica died while the call ran: it may or may not have run, so it is not run again.
    w.clock.now += timedelta(seconds=1)
    interrupted = await w.decide(asked.conversation_id, (second, True))
    assert w.ran("delete") == [{"id": 3}]
    assert interrupted.tool_calls[-1].error == INTERRUPTED_ERROR
    assert INTERRUPTED_ERROR in interrupted.response
    assert pairs_are_whole(w.agent.requests[-1])


# --- streamed -----------------------------------------------------------------------------------------------------


async def test_a_streamed_turn_sends_approval_requests_then_done_and_a_streamed_decision_continues_it() -> None:
    w = world()
    events = [e async for e in await w.streamer.start(ALICE, "delete 3")]
    kinds = [e.type for e in events]
    assert (kinds[0], kinds[-1]) == ("turn", "done")
    [request] = [e for e in events if e.type == "approval_request"]
    assert request.data == {"id": request.data["id"], "name": "delete", "arguments": {"id": 3}}
    assert kinds.index("tool_call") < kinds.index("approval_request") < kinds.index("done")
    done = events[-1].data
    assert done["status"] == "awaiting_approval"
    assert done["pending_approvals"] == [request.data]
    conversation_id = uuid.UUID(str(done["conversation_id"]))

    decision = [ToolDecision(str(request.data["id"]), True)]
    more = [e async for e in await w.streamer.decide(ALICE, conversation_id, decision)]
    assert more[0].type == "turn"
    assert [e.type for e in more if e.type in ("tool_call", "tool_result")] == ["tool_call", "tool_result"]
    assert more[-1].type == "done"
    assert more[-1].data["status"] == "complete"
    assert w.ran("delete") == [{"id": 3}]
    with pytest.raises(InvalidRequest):
        await w.streamer.decide(ALICE, conversation_id, [])


async def test_a_turn_awaiting_approval_ends_with_the_message_id_its_turn_event_announced() -> None:
    """The stream's ``turn`` event (and so the AI SDK's ``start``) names the reply's id before it exists; a turn that
    ends waiting for approval has the message holding the pending call as its reply, under that same id."""
    w = world()
    events = [e async for e in await w.streamer.start(ALICE, "delete 3")]
    announced, done = events[0].data["message_id"], events[-1].data
    assert done["status"] == "awaiting_approval"
    assert done["message_id"] == announced
    conversation_id = uuid.UUID(str(done["conversation_id"]))
    stored = await stored_history(reader_of(w.store), ALICE.user_id, conversation_id, 100)
    [asking] = [m for m in stored if any(call.name == "delete" for call in m.tool_calls)]
    assert str(asking.id) == announced

    [request] = [e for e in events if e.type == "approval_request"]
    decision = [ToolDecision(str(request.data["id"]), True)]
    more = [e async for e in await w.streamer.decide(ALICE, conversation_id, decision)]
    assert (more[0].type, more[-1].type) == ("turn", "done")
    assert more[-1].data["message_id"] == more[0].data["message_id"] != announced


# --- the property -------------------------------------------------------------------------------------------------


def nonce_model(request: AgentRequest) -> AgentResponse:
    """Like ``model``, but each delete carries its own call id as an argument, so a run names the call it ran."""
    response = model(request)
    return AgentResponse(
        response.text,
        tuple(
            ToolCall(c.id, c.name, {**c.arguments, "nonce": c.id}) if c.name == "delete" else c
            for c in response.tool_calls
        ),
    )


Say = tuple[str, str]
Decide = tuple[str, int, bool]
Operation = Say | Decide

says = st.sampled_from(["delete 3", "delete 4 then 5", "hello", "erase"]).map(lambda text: ("say", text))
decides = st.tuples(st.just("decide"), st.integers(0, 3), st.sampled_from([True, True, False]))
step = st.one_of(decides, says, decides)
then = st.lists(st.one_of(step, st.tuples(st.just("together"), step, step)), min_size=1, max_size=8)
operations = then.map(lambda rest: [("say", "delete 3"), *rest])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_whatever_the_interleaving_every_call_has_one_result_and_none_runs_twice_or_unapproved(
    plan: list[tuple[object, ...]],
) -> None:
    """Turns and decisions in any order, some at once: a decision may name any call issued so far (decided or not,
    approved or not) or none. The model always sees whole pairs; no call runs twice, or without its approval."""

    async def scenario() -> None:
        w = world(turn_wait_seconds=5.0)
        w.agent.function = nonce_model
        conversation: list[uuid.UUID] = []
        issued: list[str] = ["unknown-call"]

        async def run(operation: tuple[object, ...]) -> None:
            try:
                if operation[0] == "say":
                    reply = await w.say(str(operation[1]), conversation[0] if conversation else None)
                    conversation[:] = [reply.conversation_id]
                    issued.extend(c.id for c in reply.pending_approvals)
                elif operation[0] == "decide" and conversation:
                    call_id = issued[-1 - int(str(operation[1])) % len(issued)]  # 0: the latest call issued
                    reply = await w.decide(conversation[0], (call_id, bool(operation[2])))
                    issued.extend(c.id for c in reply.pending_approvals)
            except (DecisionConflict, ToolCallNotFound, ConversationBusy):
                pass  # refused as it should be; the invariants below still hold

        for operation in plan:
            if operation[0] == "together":
                await asyncio.gather(run(operation[1]), run(operation[2]))  # type: ignore[arg-type]
            else:
                await run(operation)

        assert all(pairs_are_whole(request) for request in w.agent.requests)
        nonces = [str(arguments["nonce"]) for arguments in w.ran("delete")]
        assert len(nonces) == len(set(nonces)), "a call ran twice"
        if conversation:
            approved = {a.tool_call_id for a in await w.store.list_approvals("alice", conversation[0]) if a.approved}
            assert set(nonces) <= approved, "a call ran without its approval"
            stored = await stored_history(reader_of(w.store), "alice", conversation[0], 500)
            results = [m.tool_call_id for m in stored if m.role is Role.TOOL]
            assert len(results) == len(set(results)), "a call has two stored results"

    asyncio.run(scenario())
