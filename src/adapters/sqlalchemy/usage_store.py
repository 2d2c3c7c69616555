"""SqlAlchemyUsageStore: the recorded model calls read back, per user: budget sums and the usage API's totals.

The rows are written by ``SqlAlchemyConversationStore.append_turn``/``finish_turn``, with the step of the turn
they belong to (``usage_rows`` is their form). Both reads are one statement on an autocommit connection (no BEGIN
or ROLLBACK around it; the budget's sum prebuilt, and run on asyncpg directly): a budget check costs a turn one round
trip, served on PostgreSQL by the ``(user_id, started_at)`` index alone, which carries the token columns.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import ColumnElement, Date, Row, bindparam, cast, func, null, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.asyncpg_statements import AutocommittedStatements
from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import usage
from chatcore.usage import PICO, ModelCall, RecordedCall, UsageGroup, UsageGrouping, UsageTotals

_U = usage.c
PICO_PER_USD = 10**12
_SUMS = (
    func.sum(_U.input_tokens),
    func.sum(_U.output_tokens),
    func.sum(_U.cached_read_tokens),
    func.sum(_U.cache_write_tokens),
    func.count(),
    func.sum(_U.cost_picousd),
    func.count(_U.cost_picousd),
)
"""A group's totals, as ``_totals`` reads them after the group's key."""


TOKENS_SINCE: Final = select(func.coalesce(func.sum(_U.input_tokens + _U.output_tokens), 0)).where(
    _U.user_id == bindparam("p_user", type_=_U.user_id.type),
    _U.started_at >= bindparam("p_since", type_=_U.started_at.type),
)
"""What a budget counts, built once: the read every budgeted turn makes, so it binds values and nothing more
(on asyncpg it runs on the driver directly, like the turn's own statements)."""


def usage_rows(records: Iterable[RecordedCall]) -> list[dict[str, Any]]:
    """The ``usage`` rows of recorded calls."""
    return [
        {"turn_id": r.turn_id, "user_id": r.user_id, "conversation_id": r.conversation_id, **call_columns(r.call)}
        for r in records
    ]


def call_columns(call: ModelCall) -> dict[str, Any]:
    """A call's own columns of its ``usage`` row (whose call it is, the row's other columns, is its turn's)."""
    return {
        "id": call.id,
        "provider": call.provider,
        "model": call.model,
        "input_tokens": call.usage.input_tokens,
        "output_tokens": call.usage.output_tokens,
        "cached_read_tokens": call.usage.cached_read_tokens,
        "cache_write_tokens": call.usage.cache_write_tokens,
        "cost_picousd": picodollars(call.cost_usd),
        "latency_ms": call.latency_seconds * 1000,
        "started_at": call.started_at,
    }


def picodollars(cost: Decimal | None) -> int | None:
    if cost is None:
        return None
    return int((cost / PICO).to_integral_value()) if cost else 0


class SqlAlchemyUsageStore:
    """A ``chatcore.ports.UsageStore`` on an AsyncEngine from ``engine.create_engine``."""

    def __init__(self, engine: AsyncEngine, *, asyncpg_statements: bool = True) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._statements = AutocommittedStatements(engine, (TOKENS_SINCE,), asyncpg_statements=asyncpg_statements)

    async def tokens_since(self, user_id: str, since: datetime) -> int:
        async with store_unavailable_on_outage():
            rows = await self._statements.rows(TOKENS_SINCE, {"p_user": user_id, "p_since": since})
        return int(rows[0][0] or 0)

    async def totals(
        self, user_id: str, start: datetime, end: datetime, grouping: UsageGrouping
    ) -> tuple[UsageTotals, tuple[UsageGroup, ...]]:
        key = self._key(grouping)
        statement = (
            select(key.label("key"), *_SUMS)
            .where(_U.user_id == user_id, _U.started_at >= start, _U.started_at < end)
            .group_by(key)
            .order_by(func.min(_U.started_at) if grouping is UsageGrouping.CONVERSATION else key.asc().nulls_last())
        )
        async with store_unavailable_on_outage(), self._autocommit.connect() as connection:
            rows = (await connection.execute(statement)).all()
        groups = tuple(UsageGroup(_key_text(row[0]), _totals(row)) for row in rows)
        return UsageTotals.sum(group.totals for group in groups), groups

    async def turn_totals(self, user_id: str, turn_id: uuid.UUID, since: datetime) -> UsageTotals:
        statement = select(null(), *_SUMS).where(_U.user_id == user_id, _U.started_at >= since, _U.turn_id == turn_id)
        async with store_unavailable_on_outage(), self._autocommit.connect() as connection:
            return _totals((await connection.execute(statement)).one())

    def _key(self, grouping: UsageGrouping) -> ColumnElement[Any]:
        if grouping is UsageGrouping.MODEL:
            return _U.model
        if grouping is UsageGrouping.CONVERSATION:
            return _U.conversation_id
        if self._engine.dialect.name == "postgresql":  # the session's time zone is UTC (engine.create_engine)
            return cast(_U.started_at, Date)
        return func.date(_U.started_at)  # SQLite keeps UTC text: its date part


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _totals(row: Row[Any]) -> UsageTotals:
    _, input_tokens, output_tokens, cached, written, calls, picos, priced = tuple(row)
    return UsageTotals(
        int(input_tokens or 0),
        int(output_tokens or 0),
        int(cached or 0),
        int(written or 0),
        int(calls),
        Decimal(int(picos or 0)) * PICO if priced == calls else None,
    )
