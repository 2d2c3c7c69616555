"""The UsageStore contract on every adapter (in-memory, SQLite, PostgreSQL): budget sums and the usage API's totals.

The rows are written the way their turn's store writes them (``Recorder``); every test uses users of its own, so
the stores shared by the session need no cleaning.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import usage as usage_table
from chatcore.adapters.sqlalchemy.usage_store import SqlAlchemyUsageStore, usage_rows
from chatcore.fakes import InMemoryChatDatabase, InMemoryUsageStore
from chatcore.model import Usage
from chatcore.ports import UsageStore
from chatcore.usage import ModelCall, RecordedCall, UsageGrouping, UsageTotals, recorded

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
DAY = datetime(2026, 11, 30, 12, tzinfo=UTC)

Recorder = Callable[[Sequence[RecordedCall]], Awaitable[None]]


@dataclass
class Subject:
    store: UsageStore
    record: Recorder


def _sql_recorder(engine: AsyncEngine) -> Recorder:
    async def record(calls: Sequence[RecordedCall]) -> None:
        async with engine.begin() as connection:
            await connection.execute(insert(usage_table), usage_rows(calls))

    return record


@pytest.fixture(params=STORES)
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "memory":
        database = InMemoryChatDatabase()

        async def record(calls: Sequence[RecordedCall]) -> None:
            database.usage.extend(calls)

        return Subject(InMemoryUsageStore(database), record)
    engine = request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")
    return Subject(SqlAlchemyUsageStore(engine), _sql_recorder(engine))


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


def call(
    at: datetime, input_tokens: int = 100, output_tokens: int = 10, *, model: str | None = "gpt-4o-mini", **more: int
) -> ModelCall:
    usage = Usage(input_tokens, output_tokens, more.get("cached", 0), more.get("written", 0))
    cost = Decimal(input_tokens + 10 * output_tokens) / 10**6 if model is not None else None
    return ModelCall("openai", model, usage, at, 0.25, cost)


async def turn(subject: Subject, user: str, *calls: ModelCall, conversation: uuid.UUID | None = None) -> uuid.UUID:
    conversation = conversation or uuid.uuid4()
    await subject.record(recorded(user, conversation, uuid.uuid4(), calls))
    return conversation


async def test_tokens_since_sums_input_and_output_from_the_instant_on(subject: Subject) -> None:
    alice, bob = new_user(), new_user()
    await turn(subject, alice, call(DAY - timedelta(microseconds=1), 1000, 1000), call(DAY, 100, 10))
    await turn(subject, alice, call(DAY + timedelta(hours=5), 40, 2, cached=30))
    await turn(subject, bob, call(DAY, 7, 7))

    assert await subject.store.tokens_since(alice, DAY) == 152
    assert await subject.store.tokens_since(alice, DAY + timedelta(hours=6)) == 0
    assert await subject.store.tokens_since(new_user(), DAY) == 0


async def test_totals_by_day_are_utc_days_in_order_with_exact_costs(subject: Subject) -> None:
    alice = new_user()
    await turn(subject, alice, call(DAY, 100, 10), call(DAY + timedelta(hours=11, minutes=59), 100, 10))
    await turn(subject, alice, call(DAY - timedelta(days=1)))  # before the start
    await turn(subject, alice, call(DAY + timedelta(hours=12), 300, 30, cached=200, written=50))
    await turn(subject, alice, call(DAY + timedelta(days=5)))  # after the end

    totals, groups = await subject.store.totals(
        alice, DAY - timedelta(hours=12), DAY + timedelta(days=2), UsageGrouping.DAY
    )

    nov_30 = UsageTotals(100 + 100, 10 + 10, 0, 0, 2, Decimal("0.0004"))
    dec_1 = UsageTotals(300, 30, 200, 50, 1, Decimal("0.0006"))
    assert [(g.key, g.totals) for g in groups] == [("2026-11-30", nov_30), ("2026-12-01", dec_1)]
    assert totals == nov_30 + dec_1
    assert totals.cost_usd == Decimal("0.001")


async def test_totals_by_model_and_conversation_and_an_unpriced_model_makes_the_cost_unknown(subject: Subject) -> None:
    alice = new_user()
    first = await turn(subject, alice, call(DAY, 100, 10), call(DAY, 50, 5, model=None))
    second = await turn(subject, alice, call(DAY + timedelta(minutes=1), 10, 1, model="claude-sonnet-4-6"))
    await turn(subject, alice, call(DAY + timedelta(minutes=2), 1, 1), conversation=first)
    start, end = DAY - timedelta(days=1), DAY + timedelta(days=1)

    totals, by_model = await subject.store.totals(alice, start, end, UsageGrouping.MODEL)
    _, by_conversation = await subject.store.totals(alice, start, end, UsageGrouping.CONVERSATION)

    assert [(g.key, g.totals.model_calls, g.totals.tokens) for g in by_model] == [
        ("claude-sonnet-4-6", 1, 11),
        ("gpt-4o-mini", 2, 112),
        (None, 1, 55),
    ]
    assert [g.totals.cost_usd for g in by_model] == [Decimal("0.00002"), Decimal("0.000211"), None]
    assert (totals.model_calls, totals.tokens, totals.cost_usd) == (4, 178, None)
    assert [(g.key, g.totals.model_calls) for g in by_conversation] == [(str(first), 3), (str(second), 1)]


async def test_another_users_usage_is_never_counted(subject: Subject) -> None:
    alice, bob = new_user(), new_user()
    await turn(subject, bob, call(DAY, 500, 500))

    totals, groups = await subject.store.totals(
        alice, DAY - timedelta(days=1), DAY + timedelta(days=1), UsageGrouping.DAY
    )

    assert (totals, groups) == (UsageTotals(), ())
    assert await subject.store.tokens_since(alice, DAY - timedelta(days=1)) == 0
