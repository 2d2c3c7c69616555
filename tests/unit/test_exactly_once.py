"""ChatService turns that happen exactly once, on the in-memory adapters: idempotent retries and conversation leases.

Waits are bounded by small policy values; every test that waits for something does so with a timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import pytest

from chatcore import (
    AgentResponse,
    AgentUnavailable,
    ChatPolicy,
    ChatReply,
    ChatService,
    ConversationBusy,
    InvalidMessage,
    Principal,
    Role,
    ToolCall,
    ToolSpec,
)
from chatcore.errors import IdempotencyInProgress, IdempotencyKeyReused
from chatcore.fakes import FunctionAgent, InMemoryConversationStore, InMemoryToolRegistry, StaticTokenVerifier
from chatcore.model import AgentRequest, JsonValue
from tests.stores import claims_of, reader_of, stored_history

ALICE = Principal("alice", "alice@example.com")
ADD = ToolSpec("add_task", "Add a task", {"type": "object", "properties": {"title": {"type": "string"}}})
WAIT = 5.0
"""The most any test waits for something to happen."""


class Model:
    """A fake model: asks for add_task once per user message, then answers; can be held at a gate or made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.failures: list[Exception] = []

    async def __call__(self, request: AgentRequest) -> AgentResponse:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        last = request.messages[-1]
        if last.role is Role.USER:
            return AgentResponse("", (ToolCall(f"call_{uuid.uuid4().hex[:8]}", "add_task", {"title": last.content}),))
        return AgentResponse(f"Added ({len(request.messages)} messages seen)")


class Tasks:
    def __init__(self) -> None:
        self.added: list[str] = []

    async def add(self, principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        self.added.append(str(arguments["title"]))
        return {"task_id": len(self.added), "title": arguments["title"]}


def build(model: Model, **policy: float) -> tuple[ChatService, InMemoryConversationStore, Tasks]:
    store = InMemoryConversationStore()
    tools = InMemoryToolRegistry()
    tasks = Tasks()
    tools.register(ADD, tasks.add)
    service = ChatService(
        store=store,
        claims=claims_of(store),
        agent=FunctionAgent(model),
        verifier=StaticTokenVerifier(),
        tools=tools,
        policy=ChatPolicy(**policy),  # type: ignore[arg-type]
    )
    return service, store, tasks


async def test_a_retry_with_the_same_key_replays_the_reply_without_running_anything() -> None:
    model = Model()
    service, store, tasks = build(model)

    first = await service.send(ALICE, "buy milk", idempotency_key="key-1")
    again = await service.send(ALICE, "buy milk", idempotency_key="key-1")

    assert again == first
    assert first.tool_calls[0].result == {"task_id": 1, "title": "buy milk"}
    assert (model.calls, tasks.added) == (2, ["buy milk"])
    history = await stored_history(reader_of(store), "alice", first.conversation_id, 10)
    assert [m.role for m in history] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert history[-1].id == first.message_id


async def test_a_key_is_bound_to_its_request() -> None:
    service, _, tasks = build(Model())
    first = await service.send(ALICE, "buy milk", idempotency_key="key-1")

    with pytest.raises(IdempotencyKeyReused):
        await service.send(ALICE, "buy bread", idempotency_key="key-1")
    with pytest.raises(IdempotencyKeyReused):
        await service.send(ALICE, "buy milk", first.conversation_id, idempotency_key="key-1")
    other = await service.send(Principal("bob"), "buy milk", idempotency_key="key-1")

    assert other.conversation_id != first.conversation_id, "keys are per user"
    assert tasks.added == ["buy milk", "buy milk"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "naïve"])
async def test_a_malformed_key_is_invalid(key: str) -> None:
    service, _, _ = build(Model())
    with pytest.raises(InvalidMessage):
        await service.send(ALICE, "hi", idempotency_key=key)


async def test_concurrent_repeats_wait_for_the_first_and_get_its_reply() -> None:
    model = Model()
    model.gate = asyncio.Event()
    service, _, tasks = build(model, turn_wait_seconds=WAIT)

    repeats = [asyncio.create_task(service.send(ALICE, "buy milk", idempotency_key="k")) for _ in range(5)]
    await asyncio.wait_for(model.entered.wait(), WAIT)
    model.gate.set()
    replies = await asyncio.wait_for(asyncio.gather(*repeats), WAIT)

    assert all(reply == replies[0] for reply in replies)
    assert tasks.added == ["buy milk"]
    assert model.calls == 2


async def test_a_repeat_gives_up_with_409_while_the_first_still_runs() -> None:
    model = Model()
    model.gate = asyncio.Event()
    service, _, _ = build(model, turn_wait_seconds=0.1)
    first = asyncio.create_task(service.send(ALICE, "buy milk", idempotency_key="k"))
    await asyncio.wait_for(model.entered.wait(), WAIT)

    with pytest.raises(IdempotencyInProgress) as raised:
        await service.send(ALICE, "buy milk", idempotency_key="k")

    assert raised.value.retry_after >= 1
    model.gate.set()
    await asyncio.wait_for(first, WAIT)


async def test_a_failed_turn_releases_its_key_and_lease_so_a_retry_runs() -> None:
    model = Model()
    model.failures.append(AgentUnavailable())
    service, store, tasks = build(model)

    with pytest.raises(AgentUnavailable) as raised:
        await service.send(ALICE, "buy milk", idempotency_key="k")
    conversation_id = raised.value.conversation_id
    assert conversation_id is not None
    assert store.database.leases == {}
    assert store.database.idempotency_keys == {}

    retry = await service.send(ALICE, "buy milk", idempotency_key="k")
    assert retry.tool_calls[0].result == {"task_id": 1, "title": "buy milk"}
    assert tasks.added == ["buy milk"]


async def test_a_turn_waits_for_the_conversation_then_sees_the_turn_before_it() -> None:
    model = Model()
    service, _, _ = build(model, turn_wait_seconds=WAIT)
    first = await service.send(ALICE, "one")
    model.gate = asyncio.Event()
    model.entered.clear()

    running = asyncio.create_task(service.send(ALICE, "two", first.conversation_id))
    await asyncio.wait_for(model.entered.wait(), WAIT)
    waiting = asyncio.create_task(service.send(ALICE, "three", first.conversation_id))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    model.gate.set()
    second, third = await asyncio.wait_for(asyncio.gather(running, waiting), WAIT)

    assert second.response == "Added (7 messages seen)"  # one, call, result, answer, two, call, result
    assert third.response == "Added (11 messages seen)"


async def test_a_turn_that_cannot_start_within_the_wait_is_busy() -> None:
    model = Model()
    service, store, _ = build(model, turn_wait_seconds=0.1)
    first = await service.send(ALICE, "one")
    model.gate = asyncio.Event()
    running = asyncio.create_task(service.send(ALICE, "two", first.conversation_id))
    await asyncio.wait_for(model.entered.wait(), WAIT)

    with pytest.raises(ConversationBusy):
        await service.send(ALICE, "three", first.conversation_id)

    model.gate.set()
    await asyncio.wait_for(running, WAIT)
    contents = [
        m.content
        for m in await stored_history(reader_of(store), "alice", first.conversation_id, 20)
        if m.role is Role.USER
    ]
    assert contents == ["one", "two"], "the turn that gave up stored nothing"


async def test_a_heartbeat_keeps_a_slow_turns_lease() -> None:
    model = Model()
    model.gate = asyncio.Event()
    service, store, _ = build(model, lease_seconds=0.15, turn_wait_seconds=0.05)
    running = asyncio.create_task(service.send(ALICE, "slow"))
    await asyncio.wait_for(model.entered.wait(), WAIT)
    [conversation_id] = store.database.leases
    taken = store.database.leases[conversation_id].expires_at

    for _ in range(int(WAIT / 0.01)):
        if store.database.leases[conversation_id].expires_at > taken:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the heartbeat never renewed the lease")
    await asyncio.sleep(0.3)  # twice the lease: only renewals keep it
    with pytest.raises(ConversationBusy):
        await service.send(ALICE, "meanwhile", conversation_id)

    model.gate.set()
    reply: ChatReply = await asyncio.wait_for(running, WAIT)
    assert reply.conversation_id == conversation_id
    assert store.database.leases == {}


async def test_a_cancelled_turn_gives_back_its_lease_and_key() -> None:
    model = Model()
    model.gate = asyncio.Event()
    service, store, _ = build(model)
    running = asyncio.create_task(service.send(ALICE, "cancel me", idempotency_key="k"))
    await asyncio.wait_for(model.entered.wait(), WAIT)
    assert store.database.leases
    assert store.database.idempotency_keys

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert store.database.leases == {}
    assert store.database.idempotency_keys == {}
