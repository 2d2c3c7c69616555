"""Every model call recorded, over HTTP on PostgreSQL, from what the providers' own wire formats report.

The app is built from Settings with the OpenAI or Anthropic adapter pointed at ``FakeProviderServer``, which
answers in each API's exact format, JSON or streamed (OpenAI's final usage chunk with
``stream_options.include_usage``, Anthropic's ``message_start``/``message_delta``), with prompt-cache reads and
(Anthropic) writes. What each call should have cost is worked out from the request bodies the fake received, by the
same wire functions that wrote its replies; the chat reply (JSON or SSE ``done``), the ``usage`` table and
``GET /usage`` must all agree with it, and the cost with a prices file.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import usage as usage_table
from chatcore.model import Usage
from chatcore.usage import Price

from ..fake_providers import FakeProviderServer, anthropic_wire, openai_wire
from ..unit.test_usage_prices import PRICES_TOML
from .conftest import AppClient, auth
from .test_http_streaming import SSE, parse_sse
from .test_observability import log_stream  # noqa: F401 - a fixture
from .test_provider_turns import settings_for

pytestmark = pytest.mark.integration

CACHE_READ, CACHE_WRITE = 4, 2
"""Small enough to fit in the shortest prompt (the fake caps them at its size)."""
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-6"}
PRICES = {  # USD per million tokens
    "gpt-4o-mini": Price(Decimal("0.15"), Decimal("0.60"), cached_read=Decimal("0.075")),
    "claude-sonnet-4-6": Price(Decimal(3), Decimal(15), cached_read=Decimal("0.30"), cache_write=Decimal("3.75")),
}


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(cache_read_tokens=CACHE_READ, cache_write_tokens=CACHE_WRITE) as server:
        yield server


@pytest.fixture
def prices_file(tmp_path: Path) -> str:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML)
    return str(path)


def reported(provider: str, body: dict[str, Any]) -> Usage:
    """What the fake reported for the request ``body``, read from the wire reply as the provider's docs define it:
    OpenAI's ``prompt_tokens`` include the cached part; Anthropic's ``input_tokens`` exclude the cache's."""
    if provider == "openai":
        whole = openai_wire.completion(body, openai_wire.decide(body), cached_tokens=CACHE_READ)["usage"]
        cached = whole["prompt_tokens_details"]["cached_tokens"]
        return Usage(whole["prompt_tokens"], whole["completion_tokens"], cached, 0)
    message = anthropic_wire.message(
        body, anthropic_wire.decide(body), cache_read_tokens=CACHE_READ, cache_write_tokens=CACHE_WRITE
    )["usage"]
    read, written = message["cache_read_input_tokens"], message["cache_creation_input_tokens"]
    return Usage(message["input_tokens"] + read + written, message["output_tokens"], read, written)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def recorded_rows(engine: AsyncEngine, user: str) -> list[Any]:
    async with engine.connect() as connection:
        statement = select(usage_table).where(usage_table.c.user_id == user).order_by(usage_table.c.started_at)
        return list((await connection.execute(statement)).all())


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_each_call_is_recorded_as_the_provider_reported_it_and_the_reply_adds_them_up(
    app_client: AppClient,
    pg_engine: AsyncEngine,
    fake: FakeProviderServer,
    prices_file: str,
    provider: str,
    streamed: bool,
) -> None:
    user = new_user()
    async with app_client(**settings_for(provider, fake, prices_path=prices_file)) as client:
        response = await client.post(
            f"/api/{user}/chat",
            json={"message": "Add a task to buy milk"},
            headers={**auth(user), **(SSE if streamed else {})},
        )
        assert response.status_code == 200, response.text
        reply = parse_sse(response.text)[-1]["data"] if streamed else response.json()
        report = (await client.get(f"/api/{user}/usage", headers=auth(user))).json()

    bodies = fake.bodies(provider)  # type: ignore[arg-type]
    assert len(bodies) == 2  # the tool call, then the answer
    assert all(body.get("stream", False) is streamed for body in bodies)
    calls = [reported(provider, body) for body in bodies]
    assert all(c.cached_read_tokens == CACHE_READ for c in calls)
    assert all(c.cache_write_tokens == (CACHE_WRITE if provider == "anthropic" else 0) for c in calls)
    price = PRICES[MODELS[provider]]
    cost = sum((price.cost(c) or Decimal("NaN") for c in calls), Decimal(0))
    total = Usage.sum(calls)

    assert reply["usage"] == {
        "input_tokens": total.input_tokens,
        "output_tokens": total.output_tokens,
        "cached_tokens": total.cached_read_tokens,
        "model_calls": 2,
        "cost_usd": float(cost),
    }

    rows = await recorded_rows(pg_engine, user)
    assert [Usage(r.input_tokens, r.output_tokens, r.cached_read_tokens, r.cache_write_tokens) for r in rows] == calls
    assert {(r.provider, r.model) for r in rows} == {(provider, MODELS[provider])}
    assert {str(r.conversation_id) for r in rows} == {reply["conversation_id"]}
    assert len({r.turn_id for r in rows}) == 1
    assert all(r.latency_ms > 0 for r in rows)
    assert sum(r.cost_picousd for r in rows) == int(cost * 10**12)

    assert report["totals"]["input_tokens"] == total.input_tokens
    assert report["totals"]["output_tokens"] == total.output_tokens
    assert report["totals"]["model_calls"] == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_model_without_a_price_has_a_null_cost_and_its_tokens_still_count(
    app_client: AppClient, fake: FakeProviderServer, tmp_path: Path, provider: str
) -> None:
    other = tmp_path / "prices.json"
    other.write_text(json.dumps({"some-other-model": {"input": 1, "output": 2}}))
    user = new_user()
    async with app_client(**settings_for(provider, fake, prices_path=str(other))) as client:
        response = await client.post(f"/api/{user}/chat", json={"message": "hello"}, headers=auth(user))
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["cost_usd"] is None
    assert usage["model_calls"] == 1
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0


async def test_a_streamed_call_that_fails_after_anthropic_billed_its_input_is_recorded(
    app_client: AppClient, pg_engine: AsyncEngine, fake: FakeProviderServer
) -> None:
    user = new_user()
    fake.fail_next("stream_error")
    async with app_client(**settings_for("anthropic", fake)) as client:
        response = await client.post(f"/api/{user}/chat", json={"message": "hello"}, headers={**auth(user), **SSE})
    events = parse_sse(response.text)
    assert events[-1]["event"] == "error"

    [row] = await recorded_rows(pg_engine, user)
    [body] = fake.bodies("anthropic")
    billed = reported("anthropic", body)
    assert (row.input_tokens, row.cached_read_tokens, row.cache_write_tokens) == (
        billed.input_tokens,
        billed.cached_read_tokens,
        billed.cache_write_tokens,
    )
    assert str(row.conversation_id) == events[-1]["data"]["conversation_id"]


async def test_the_offline_agent_records_its_calls_with_zero_tokens(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client() as client:
        response = await client.post(
            f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user)
        )
    assert response.json()["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "model_calls": 2,
        "cost_usd": 0.0,
    }
    rows = await recorded_rows(pg_engine, user)
    assert [(r.provider, r.input_tokens, r.output_tokens) for r in rows] == [("offline", 0, 0)] * 2


async def test_the_chat_turn_log_line_carries_the_turns_tokens(
    app_client: AppClient,
    fake: FakeProviderServer,
    log_stream: io.StringIO,  # noqa: F811 - the fixture imported above
) -> None:
    user = new_user()
    async with app_client(**settings_for("openai", fake)) as client:
        response = await client.post(
            f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user)
        )
    usage = response.json()["usage"]
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (turn,) = [line for line in lines if line["event"] == "chat_turn"]
    assert (turn["input_tokens"], turn["output_tokens"], turn["cached_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
        usage["cached_tokens"],
    )
    assert turn["input_tokens"] > 0
    assert turn["model_calls"] == usage["model_calls"] == 2
