"""GET /api/{user_id}/usage over HTTP on PostgreSQL: totals, groups and budget; another user's usage never shows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import usage as usage_table
from chatcore.adapters.sqlalchemy.usage_store import usage_rows
from chatcore.model import Usage
from chatcore.usage import BudgetPeriod, ModelCall, TokenBudget, recorded

from .conftest import auth
from .observed_app import observed_app

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


def call(at: datetime, input_tokens: int, output_tokens: int, model: str | None = "gpt-4o-mini") -> ModelCall:
    cost = None if model is None else Decimal(input_tokens) * Decimal("0.15") / 10**6
    return ModelCall("openai", model, Usage(input_tokens, output_tokens, input_tokens // 2), at, 0.1, cost)


async def test_a_user_reads_their_usage_grouped_and_never_another_users(
    postgres_url: str, pg_engine: AsyncEngine
) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    conversation = uuid.uuid4()
    async with observed_app(postgres_url, clock=lambda: NOW, user_token_budget=TokenBudget(1000, BudgetPeriod.DAY)) as (
        client,
        _,
    ):

        def calls() -> list[ModelCall]:
            return [
                call(NOW - timedelta(days=1), 200, 20),
                call(NOW, 100, 10),
                call(NOW + timedelta(minutes=1), 40, 4, model=None),
            ]

        async with pg_engine.begin() as connection:
            await connection.execute(
                insert(usage_table), usage_rows(recorded(alice, conversation, uuid.uuid4(), calls()))
            )
            await connection.execute(
                insert(usage_table), usage_rows(recorded(bob, uuid.uuid4(), uuid.uuid4(), calls()))
            )

        by_day = await client.get(f"/api/{alice}/usage?from=2026-12-02&to=2026-12-03", headers=auth(alice))
        by_model = await client.get(f"/api/{alice}/usage?from=2026-12-03&group_by=model", headers=auth(alice))
        by_conversation = await client.get(f"/api/{alice}/usage?group_by=conversation", headers=auth(alice))
        foreign = await client.get(f"/api/{alice}/usage", headers=auth(bob))
        nothing = await client.get(f"/api/someone-{uuid.uuid4().hex[:8]}/usage", headers=auth("x"))

    assert by_day.status_code == 200, by_day.text
    body = by_day.json()
    assert (body["from"], body["to"], body["group_by"]) == ("2026-12-02", "2026-12-03", "day")
    assert body["totals"] == {
        "input_tokens": 340,
        "output_tokens": 34,
        "cached_tokens": 170,
        "cache_write_tokens": 0,
        "model_calls": 3,
        "cost_usd": None,
    }
    assert [(g["day"], g["model_calls"], g["cost_usd"]) for g in body["groups"]] == [
        ("2026-12-02", 1, 0.00003),
        ("2026-12-03", 2, None),
    ]
    assert body["budget"] == {"limit": 1000, "used": 154, "resets_at": "2026-12-04T00:00:00Z"}
    assert [(g["model"], g["input_tokens"]) for g in by_model.json()["groups"]] == [("gpt-4o-mini", 100), (None, 40)]
    assert by_model.json()["totals"]["input_tokens"] == 140
    assert [(g["conversation_id"], g["model_calls"]) for g in by_conversation.json()["groups"]] == [
        (str(conversation), 3)
    ]
    assert foreign.status_code == 403
    assert nothing.status_code == 403


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("from=2026-13-01", "from must be an ISO date"),
        ("to=yesterday", "to must be an ISO date"),
        ("from=2026-12-03&to=2026-12-01", "from must not be after to"),
        ("group_by=week", "group_by must be one of day|conversation|model"),
        ("to=9999-12-31", "between 0001-01-01 and 9999-12-30"),
    ],
)
async def test_bad_dates_and_groupings_are_400_with_a_detail(postgres_url: str, query: str, detail: str) -> None:
    async with observed_app(postgres_url) as (client, _):
        response = await client.get(f"/api/alice/usage?{query}", headers=auth("alice"))
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


async def test_without_a_budget_the_budget_is_null_and_the_endpoint_is_documented(postgres_url: str) -> None:
    async with observed_app(postgres_url) as (client, _):
        response = await client.get("/api/alice/usage", headers=auth("alice"))
        unauthenticated = await client.get("/api/alice/usage")
        schema = (await client.get("/schema/openapi.json")).json()

    assert response.status_code == 200, response.text
    assert response.json()["budget"] is None
    assert unauthenticated.status_code == 401
    operation = schema["paths"]["/api/{user_id}/usage"]["get"]
    assert {"200", "400", "401", "403"} <= set(operation["responses"])
    example = operation["responses"]["200"]["content"]["application/json"]["examples"]
    assert any("budget" in e["value"] for e in example.values())
    assert {p["name"] for p in operation["parameters"]} >= {"from", "to", "group_by"}
