"""The PostgreSQL pool replaces dead connections before use, without pinging the ones in steady use.

``create_engine`` does not use ``pool_pre_ping`` (three round trips on every checkout, twice a turn):
a connection the server closed is known to asyncpg for free, and only one left idle for a while is
pinged. These tests pin both halves: the protection, and that the hot path pays nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.model import ChatMessage, Role

pytestmark = pytest.mark.integration

PING = ";"
WAIT_SECONDS = 5.0
POLL_SECONDS = 0.01


@asynccontextmanager
async def one_connection_pool(
    url: str, *, ping_after_idle_seconds: float
) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine with a single pooled connection, and the simple queries asyncpg sends by itself on it."""
    engine = create_engine(url, pool_size=1, max_overflow=0, ping_after_idle_seconds=ping_after_idle_seconds)
    queries: list[str] = []

    def on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda record: queries.append(record.query.strip()))

    event.listen(engine.sync_engine, "connect", on_connect)
    try:
        yield engine.execution_options(isolation_level="AUTOCOMMIT"), queries
    finally:
        await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pid: int = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_SECONDS / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    pytest.fail(f"still not so after {WAIT_SECONDS} s")


async def test_a_connection_the_server_closed_is_replaced_before_use(postgres_url: str) -> None:
    async with one_connection_pool(postgres_url, ping_after_idle_seconds=3600) as (engine, queries):
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            first = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()

        admin = create_async_engine(postgres_url, poolclass=NullPool)
        try:
            async with admin.connect() as connection:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        finally:
            await admin.dispose()
        await wait_until(driver.is_closed)  # the event loop saw the server close the socket

        assert await backend_pid(engine) != first  # a new connection, and no error for the caller
        assert PING not in queries  # known to be dead without asking the server


async def test_a_connection_in_steady_use_is_not_pinged(postgres_url: str) -> None:
    async with one_connection_pool(postgres_url, ping_after_idle_seconds=3600) as (engine, queries):
        pids = [await backend_pid(engine) for _ in range(5)]

    assert len(set(pids)) == 1
    assert queries == []  # autocommit statements alone: no ping, no BEGIN, no COMMIT


async def test_a_connection_idle_past_the_threshold_is_pinged_first(postgres_url: str) -> None:
    async with one_connection_pool(postgres_url, ping_after_idle_seconds=0) as (engine, queries):
        first = await backend_pid(engine)  # a new connection: nothing to check yet
        assert PING not in queries
        second = await backend_pid(engine)

    assert first == second
    assert PING in queries


async def test_overflow_connections_go_back_to_a_full_pool_without_leaving_the_event_loop(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The turn's statements on asyncpg give their connection back themselves; an overflow connection finding the
    pool full is closed then, which awaits, so it must happen in a greenlet: outside one the pool logs
    MissingGreenlet ("Exception closing connection") and leaves the connection open on the server."""
    caplog.set_level(logging.ERROR, logger="sqlalchemy.pool")
    engine = create_engine(postgres_url, pool_size=1, max_overflow=3)
    store = SqlAlchemyConversationStore(engine)
    try:
        starts = await asyncio.gather(
            *(
                store.begin_turn(
                    f"overflow-{uuid.uuid4().hex[:8]}",
                    None,
                    ChatMessage(role=Role.USER, content=f"hello {i}"),
                    turn_id=uuid.uuid4(),
                    history_limit=10,
                )
                for i in range(4)
            )
        )
        assert len({start.conversation.id for start in starts}) == 4
        pool: Any = engine.sync_engine.pool
        assert (pool.checkedout(), pool.overflow()) == (0, 0), "every connection back, the overflow ones closed"
        assert [record.getMessage() for record in caplog.records if record.name.startswith("sqlalchemy")] == []
    finally:
        await engine.dispose()
