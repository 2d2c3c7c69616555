"""Token budgets over HTTP on PostgreSQL: two replicas (each app with its own container and process-local ledger)
share a user's budget through the database, refuse with 429, ``Retry-After`` and ``token budget exhausted`` on every
route that starts a turn (JSON, SSE before streaming, the AI SDK's and AG-UI's), and let the user in again when
the window resets — time moved by the container's clock, which every replica's service and budget read.
Also: a budget check costs a turn exactly one more round trip, and none when no budget is configured.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse, Role, ToolCall, Usage
from chatcore.usage import TokenBudget

from .conftest import auth
from .observed_app import engine_of, observed_app
from .test_http_streaming import SSE, parse_sse
from .test_round_trips import counting, log_driver_queries

pytestmark = pytest.mark.integration

START = datetime(2031, 5, 6, 10, 20, tzinfo=UTC)
TOKENS_PER_CALL = 100


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def costly(request: AgentRequest) -> AgentResponse:
    """'notes N': N steps calling add_task, then an answer; each call reports ``TOKENS_PER_CALL`` tokens."""
    last_user = max(i for i, m in enumerate(request.messages) if m.role is Role.USER)
    words = request.messages[last_user].content.split()
    steps = sum(1 for m in request.messages[last_user + 1 :] if m.role is Role.ASSISTANT)
    usage = Usage(TOKENS_PER_CALL - 10, 10)
    if words[0] == "notes" and steps < int(words[1]):
        return AgentResponse(
            "", (ToolCall(f"call-{uuid.uuid4().hex[:8]}", "add_task", {"title": f"n{steps}"}),), usage=usage
        )
    return AgentResponse(f"done after {steps} steps", usage=usage)


@asynccontextmanager
async def replicas(
    postgres_url: str, clock: Clock, count: int = 2, **settings: Any
) -> AsyncIterator[list[AsyncTestClient[Any]]]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            client, _container = await stack.enter_async_context(
                observed_app(postgres_url, FunctionAgent(costly), clock=clock, **settings)
            )
            clients.append(client)
        yield clients


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def chat(client: AsyncTestClient[Any], user: str, message: str, **headers: str) -> Any:
    return await client.post(f"/api/{user}/chat", json={"message": message}, headers={**auth(user), **headers})


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text (labels in the order the client writes them: sorted)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in {text}")


def assert_refused(response: Any, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["detail"] == "token budget exhausted"
    assert response.headers["retry-after"] == str(retry_after)


async def test_two_replicas_share_a_budget_refuse_on_every_route_and_let_the_user_in_when_the_window_resets(
    postgres_url: str,
) -> None:
    clock, alice, bob = Clock(), new_user(), new_user()
    budget = TokenBudget.parse("150/hour")
    async with replicas(postgres_url, clock, user_token_budget=budget) as (a, b):
        first = await chat(a, alice, "hello")  # 100 of 150
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["input_tokens"] + first.json()["usage"]["output_tokens"] == 100
        second = await chat(b, alice, "hello")  # the other replica reads the 100 stored, starts, and reaches 200
        assert second.status_code == 200, second.text

        clock.now = START + timedelta(minutes=5)
        retry_after = int((START.replace(minute=0) + timedelta(hours=1) - clock.now).total_seconds())
        for replica in (a, b):
            assert_refused(await chat(replica, alice, "hello"), retry_after)
            assert_refused(await chat(replica, alice, "hello", **SSE), retry_after)
            keyed = {**SSE, "Idempotency-Key": f"key-{uuid.uuid4().hex}"}
            assert_refused(await chat(replica, alice, "hello", **keyed), retry_after)
            ai_sdk = {"id": "chat-1", "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]}
            assert_refused(
                await replica.post(f"/api/{alice}/ai-sdk/chat", json=ai_sdk, headers=auth(alice)), retry_after
            )
            run = {"threadId": "t1", "runId": "r1", "messages": [{"id": "m1", "role": "user", "content": "hi"}]}
            assert_refused(await replica.post(f"/api/{alice}/ag-ui", json=run, headers=auth(alice)), retry_after)
        assert (await chat(b, bob, "hello")).status_code == 200  # another user's budget is their own
        metrics = (await a.get("/metrics")).text
        assert metric(metrics, "chatcore_budget_refusals_total") == 5.0  # this replica's five refusals
        assert metric(metrics, 'chatcore_tokens_total{kind="input",model="(unknown)",provider="function"}') == 90.0
        assert metric(metrics, 'chatcore_tokens_total{kind="output",model="(unknown)",provider="function"}') == 10.0

        report = (await a.get(f"/api/{alice}/usage", headers=auth(alice))).json()
        assert report["budget"] == {
            "limit": 150,
            "used": 200,
            "resets_at": (START.replace(minute=0) + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        }
        listed = (await a.get(f"/api/{alice}/conversations", headers=auth(alice))).json()
        assert len(listed["items"] if isinstance(listed, dict) else listed) == 2  # refused turns stored nothing

        clock.now = START.replace(minute=0) + timedelta(hours=1)  # the next window
        for replica in (a, b):
            again = await chat(replica, alice, "hello", **SSE)
            assert again.status_code == 200, again.text
            assert parse_sse(again.text)[-1]["event"] == "done"


async def test_a_budget_that_runs_out_mid_turn_ends_it_honestly_over_http(postgres_url: str) -> None:
    clock, alice = Clock(), new_user()
    async with replicas(postgres_url, clock, count=1, user_token_budget=TokenBudget.parse("250/day")) as (a,):
        reply = await chat(a, alice, "notes 5")
        assert reply.status_code == 200, reply.text
        body = reply.json()
        tasks = (await a.get(f"/api/{alice}/tasks", headers=auth(alice))).json()
        history = (
            await a.get(f"/api/{alice}/conversations/{body['conversation_id']}/messages", headers=auth(alice))
        ).json()

    assert "token budget ran out" in body["response"]
    assert [c["name"] for c in body["tool_calls"]] == ["add_task"] * 3
    assert body["usage"]["model_calls"] == 3
    assert len(tasks) == 3  # what the tools did is real
    messages = history["items"] if isinstance(history, dict) else history
    calls = [c for m in messages for c in m["tool_calls"]]
    assert len(calls) == 3
    assert all("result" in c and "error" not in c for c in calls)  # every call has its result: a valid history
    assert messages[-1]["content"] == body["response"]


async def test_max_turn_tokens_stops_the_tool_loop_over_http(postgres_url: str) -> None:
    clock, alice = Clock(), new_user()
    async with replicas(postgres_url, clock, count=1, max_turn_tokens=200) as (a,):
        reply = (await chat(a, alice, "notes 5", **SSE)).text
    done = parse_sse(reply)[-1]
    assert done["event"] == "done"
    assert "limit of 200 tokens" in done["data"]["response"]
    assert done["data"]["usage"]["model_calls"] == 2
    assert len(done["data"]["tool_calls"]) == 2


@pytest.mark.parametrize("budget", [None, "1000000/day"], ids=["no-budget", "budget"])
async def test_a_budget_costs_a_turn_one_round_trip_and_no_budget_none(postgres_url: str, budget: str | None) -> None:
    clock, alice = Clock(), new_user()
    settings: dict[str, Any] = {"user_token_budget": TokenBudget.parse(budget)}
    async with observed_app(postgres_url, FunctionAgent(costly), clock=clock, **settings) as (client, container):
        engine = await engine_of(container)
        queries = await log_driver_queries(engine)
        warm = await chat(client, alice, "hello")
        conversation = warm.json()["conversation_id"]
        async with counting(engine, queries) as counts:
            payload = {"message": "hello", "conversation_id": conversation}
            response = await client.post(f"/api/{alice}/chat", json=payload, headers=auth(alice))
        assert response.status_code == 200, response.text
    budget_reads = [q for q in counts.round_trips if "usage" in q.lower()]
    assert len(budget_reads) == (0 if budget is None else 1), counts.describe()
    assert len(counts.round_trips) == (2 if budget is None else 3), counts.describe()
