"""Database round trips of one chat turn, counted with SQLAlchemy engine events, so a regression fails CI.

The target (issue 7): a turn without tools makes at most 3 round trips outside the model call, whatever
the conversation's length, and holds no connection while the model thinks. Counted: the statements
SQLAlchemy sends (``before_cursor_execute``) plus every query asyncpg sends outside them, seen by its
query logger: the turn's own statements, which the store runs on asyncpg directly
(``asyncpg_statements.py``), and any BEGIN, COMMIT or ping. Printed with ``-s``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse, ToolCall

from .conftest import auth
from .observed_app import engine_of, observed_app

pytestmark = pytest.mark.integration

MAX_TURN_STATEMENTS = 3
MAX_TOOL_TURN_STATEMENTS = 5
"""Begin and finish, the tool's own INSERT, and (since tool results are kept as they happen, issue 17) the step
stored before its call runs and the call's result stored as soon as it returns: one autocommitted statement each."""


@dataclass
class Counts:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0
    checkouts: int = 0
    driver_queries: list[str] = field(default_factory=list)

    @property
    def round_trips(self) -> list[str]:
        return [*self.statements, *(" ".join(query.split())[:60] for query in self.driver_queries)]

    def describe(self) -> str:
        return (
            f"{len(self.statements)} statements in {self.transactions} transactions, {self.checkouts} checkouts; "
            f"+ {len(self.driver_queries)} driver queries {self.driver_queries}"
        )


async def log_driver_queries(engine: AsyncEngine) -> list[str]:
    """From now on, what asyncpg sends past SQLAlchemy's cursor: statements run on the driver, BEGIN, COMMIT."""
    queries: list[str] = []

    def on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda record: queries.append(record.query.strip()))

    await engine.dispose()  # new connections from here on, each with the logger
    event.listen(engine.sync_engine, "connect", on_connect)
    return queries


@asynccontextmanager
async def counting(engine: AsyncEngine, driver_queries: list[str] | None = None) -> AsyncIterator[Counts]:
    """Every statement sent (``before_cursor_execute``), transaction begun and connection checked out.

    asyncpg hands a query to its loggers with ``call_soon`` on the loop the app runs on: a query is logged a
    little after it answered, so the count starts and ends once the log has been quiet for a moment.
    """
    await _quiet(driver_queries)
    counts = Counts()
    sync_engine = engine.sync_engine
    already = len(driver_queries or ())

    def on_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        counts.statements.append(" ".join(statement.split())[:60])

    def on_begin(conn: Any) -> None:
        counts.transactions += 1

    def on_checkout(*_: Any) -> None:
        counts.checkouts += 1

    listeners = [("before_cursor_execute", on_statement), ("begin", on_begin), ("checkout", on_checkout)]
    for name, listener in listeners:
        event.listen(sync_engine, name, listener)
    try:
        yield counts
    finally:
        await _quiet(driver_queries)
        for name, listener in listeners:
            event.remove(sync_engine, name, listener)
        counts.driver_queries = list((driver_queries or [])[already:])


async def _quiet(queries: list[str] | None, settle_seconds: float = 0.05, limit_seconds: float = 2.0) -> None:
    """Until ``queries`` has not grown for ``settle_seconds`` (at most ``limit_seconds``)."""
    if queries is None:
        return
    waited = 0.0
    seen = -1
    while len(queries) != seen and waited < limit_seconds:
        seen = len(queries)
        await asyncio.sleep(settle_seconds)
        waited += settle_seconds


class PoolWatchingAgent(FunctionAgent):
    """Answers with a script, noting how many connections the app's pool has out while the model 'thinks'."""

    def __init__(self, *responses: AgentResponse) -> None:
        self.script = list(responses)
        self.engine: AsyncEngine | None = None
        self.checked_out_while_thinking: list[int] = []
        super().__init__(self.answer)

    def answer(self, request: AgentRequest) -> AgentResponse:
        assert self.engine is not None
        self.checked_out_while_thinking.append(self.engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


async def test_a_turn_without_tools_takes_at_most_three_statements_new_or_continued(postgres_url: str) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    agent = PoolWatchingAgent(AgentResponse("Hello!"))
    async with observed_app(postgres_url, agent) as (client, container):
        agent.engine = await engine_of(container)
        driver_queries = await log_driver_queries(agent.engine)
        first = await client.post(f"/api/{user}/chat", json={"message": "Hi"}, headers=auth(user))
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        for _ in range(3):  # some history, so the continued turn reads a real window
            more = {"message": "And again", "conversation_id": conversation}
            assert (await client.post(f"/api/{user}/chat", json=more, headers=auth(user))).status_code == 200

        async with counting(agent.engine, driver_queries) as new:
            created = await client.post(f"/api/{user}/chat", json={"message": "A new one"}, headers=auth(user))
        assert created.status_code == 200, created.text
        async with counting(agent.engine, driver_queries) as continued:
            payload = {"message": "Go on", "conversation_id": conversation}
            answered = await client.post(f"/api/{user}/chat", json=payload, headers=auth(user))
        assert answered.status_code == 200, answered.text

    print(f"\nturn, new conversation: {new.describe()}\nturn, continued: {continued.describe()}")
    assert 1 <= len(new.round_trips) <= MAX_TURN_STATEMENTS, new.describe()
    assert 1 <= len(continued.round_trips) <= MAX_TURN_STATEMENTS, continued.describe()
    assert continued.checkouts <= 2
    assert new.checkouts <= 2
    assert agent.checked_out_while_thinking
    assert set(agent.checked_out_while_thinking) == {0}


async def test_a_turn_with_one_add_task_call_stays_within_five_statements(postgres_url: str) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    call = ToolCall("call_1", "add_task", {"title": "Buy milk"})
    agent = PoolWatchingAgent(AgentResponse("", (call,)), AgentResponse("Added 'Buy milk'."))
    async with observed_app(postgres_url, agent) as (client, container):
        agent.engine = await engine_of(container)
        driver_queries = await log_driver_queries(agent.engine)
        warm = await client.post(f"/api/{user}/chat", json={"message": "Hello"}, headers=auth(user))  # connections
        assert warm.status_code == 200, warm.text
        agent.script = [AgentResponse("", (call,)), AgentResponse("Added 'Buy milk'.")]
        async with counting(agent.engine, driver_queries) as counts:
            response = await client.post(f"/api/{user}/chat", json={"message": "Add milk"}, headers=auth(user))
    assert response.status_code == 200, response.text
    assert [c["name"] for c in response.json()["tool_calls"]] == ["add_task"]

    print(f"\nturn with add_task: {counts.describe()}")
    assert len(counts.round_trips) <= MAX_TOOL_TURN_STATEMENTS, counts.describe()
    assert set(agent.checked_out_while_thinking) == {0}
