"""What the SQL stores promise beyond the port contracts: URLs, engines, outages, UTC, and the lock-wait window."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import delete, exc, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from chatcore.adapters.sqlalchemy.conversation_reader import SqlAlchemyConversationReader
from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.engine import DEFAULT_DATABASE_URL, create_engine, database_url_from
from chatcore.adapters.sqlalchemy.errors import is_unavailable
from chatcore.adapters.sqlalchemy.tables import conversations, messages
from chatcore.adapters.sqlalchemy.turn_claim_store import SqlAlchemyTurnClaimStore
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.errors import StoreUnavailable
from chatcore.model import ChatMessage, Role, utcnow
from tests.stores import stored_conversation, stored_history


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    engine: AsyncEngine = request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")
    return engine


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


def closed_port() -> int:
    """A port nothing listens on: the OS just handed it out and it was closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (None, DEFAULT_DATABASE_URL),
        ("", DEFAULT_DATABASE_URL),
        ("   ", DEFAULT_DATABASE_URL),
        ("postgres://u:pw@db:5432/app", "postgresql+asyncpg://u:pw@db:5432/app"),
        ("postgresql://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"),
        ("postgresql+asyncpg://u:pw@db/app", "postgresql+asyncpg://u:pw@db/app"),
        (
            "postgresql://u:p%40ss%25@ep-x.neon.tech/neondb?sslmode=require&channel_binding=require",
            "postgresql+asyncpg://u:p%40ss%25@ep-x.neon.tech/neondb?ssl=require",
        ),
        ("sqlite:///./data/chat.db", "sqlite+aiosqlite:///./data/chat.db"),
        ("sqlite:////var/lib/chat.db", "sqlite+aiosqlite:////var/lib/chat.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_from(configured: str | None, expected: str) -> None:
    assert database_url_from(configured) == expected


def test_a_malformed_database_url_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="scheme://") as raised:
        database_url_from("hunter2-is-my-password")

    assert "hunter2" not in str(raised.value)


async def test_create_engine_connects_lazily_with_the_pool_asked_for() -> None:
    engine = create_engine(f"postgres://nobody@127.0.0.1:{closed_port()}/nothing", pool_size=7, pool_timeout=3.0)
    try:
        assert engine.dialect.driver == "asyncpg"
        pool = engine.pool
        assert isinstance(pool, AsyncAdaptedQueuePool)
        assert (pool.checkedout(), pool.size(), pool.timeout()) == (0, 7, 3.0)
    finally:
        await engine.dispose()


async def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.connect() as connection:
        journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
        foreign_keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
        busy_timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()

    assert (journal, foreign_keys, busy_timeout) == ("wal", 1, 5000)


async def test_deleting_a_conversation_deletes_its_messages(engine: AsyncEngine) -> None:
    store = SqlAlchemyConversationStore(engine)
    start = await store.begin_turn(new_user(), None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=5)
    count = select(func.count()).select_from(messages).where(messages.c.conversation_id == start.conversation.id)

    async with engine.begin() as connection:
        assert (await connection.execute(count)).scalar_one() == 1
        await connection.execute(delete(conversations).where(conversations.c.id == start.conversation.id))
        assert (await connection.execute(count)).scalar_one() == 0


async def test_times_are_stored_and_returned_in_utc(engine: AsyncEngine) -> None:
    store = SqlAlchemyConversationStore(engine)
    user = new_user()
    in_new_york = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-5)))
    message = ChatMessage(role=Role.USER, content="hi", created_at=in_new_york)

    start = await store.begin_turn(user, None, message, turn_id=uuid.uuid4(), history_limit=5)
    reader = SqlAlchemyConversationReader(engine)
    [stored] = await stored_history(reader, user, start.conversation.id, 5)

    assert stored.created_at.tzinfo is UTC
    assert start.user_message.created_at.tzinfo is UTC
    assert stored.created_at == datetime(2025, 1, 2, 8, 4, 5, 678901, tzinfo=UTC)
    assert stored == start.user_message
    conversation = await stored_conversation(reader, user, start.conversation.id)
    assert conversation.created_at.tzinfo is UTC
    assert conversation.updated_at.tzinfo is UTC


async def test_a_long_title_is_cut_to_the_column(engine: AsyncEngine) -> None:
    store = SqlAlchemyConversationStore(engine)
    user = new_user()

    start = await store.begin_turn(
        user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=5, title="é" * 300
    )

    reader = SqlAlchemyConversationReader(engine)
    assert (await stored_conversation(reader, user, start.conversation.id)).title == "é" * 200
    assert start.conversation.title == "é" * 200


async def _wait_for_a_lock_wait(engine: AsyncEngine) -> None:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(500):
        async with engine.connect() as connection:
            if (await connection.execute(waiting)).scalar_one() > 0:
                return
        await asyncio.sleep(0.01)
    pytest.fail("the turn never waited for the conversation's row lock")


@pytest.mark.integration
async def test_a_turn_that_waited_for_the_lock_sees_the_turn_it_waited_for(pg_engine: AsyncEngine) -> None:
    """The single-statement begin_turn reads an old snapshot after a lock wait; it must notice and read again."""
    store = SqlAlchemyConversationStore(pg_engine)
    user = new_user()
    start = await store.begin_turn(user, None, ChatMessage.user("first"), turn_id=uuid.uuid4(), history_limit=10)
    conversation_id = start.conversation.id

    async with pg_engine.connect() as other_turn:
        transaction = await other_turn.begin()
        await other_turn.execute(
            update(conversations)
            .where(conversations.c.id == conversation_id)
            .values(last_seq=conversations.c.last_seq + 1)
        )
        await other_turn.execute(
            insert(messages).values(
                id=uuid.uuid4(),
                conversation_id=conversation_id,
                seq=2,
                role="assistant",
                content="in flight",
                created_at=utcnow(),
            )
        )
        blocked = asyncio.create_task(
            store.begin_turn(user, conversation_id, ChatMessage.user("next"), turn_id=uuid.uuid4(), history_limit=10)
        )
        await _wait_for_a_lock_wait(pg_engine)
        await transaction.commit()
        turn = await blocked

    assert [m.content for m in turn.history] == ["first", "in flight"]
    assert turn.user_message.seq == 3


@pytest.fixture
async def unreachable_engine() -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/chatcore", pool_timeout=2.0)
    yield engine
    await engine.dispose()


def assert_sanitised(error: StoreUnavailable) -> None:
    assert error.detail == StoreUnavailable.default_detail
    assert error.__cause__ is not None
    for secret in ("127.0.0.1", "secret", "SELECT", "INSERT", "UPDATE"):
        assert secret not in str(error)


async def test_an_unreachable_postgres_is_store_unavailable(unreachable_engine: AsyncEngine) -> None:
    conversations_store = SqlAlchemyConversationStore(unreachable_engine)
    tasks_store = SqlAlchemyTaskStore(unreachable_engine)
    user = new_user()

    with pytest.raises(StoreUnavailable) as raised:
        await conversations_store.ping()
    assert_sanitised(raised.value)
    with pytest.raises(StoreUnavailable) as raised:
        await conversations_store.begin_turn(user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=5)
    assert_sanitised(raised.value)
    with pytest.raises(StoreUnavailable):
        await SqlAlchemyConversationReader(unreachable_engine).list_messages(user, uuid.uuid4(), limit=5)
    with pytest.raises(StoreUnavailable):
        await SqlAlchemyTurnClaimStore(unreachable_engine).renew_turn(
            user, uuid.uuid4(), conversation_id=uuid.uuid4(), idempotency_key="k", lease_seconds=5
        )
    with pytest.raises(StoreUnavailable):
        await tasks_store.add(user, "milk")
    with pytest.raises(StoreUnavailable):
        await tasks_store.list(user)


async def test_an_unopenable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing-directory' / 'chatcore.db'}")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await SqlAlchemyConversationStore(engine).ping()
    finally:
        await engine.dispose()
    assert raised.value.detail == StoreUnavailable.default_detail


async def test_an_exhausted_pool_is_store_unavailable(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    try:
        async with engine.connect():
            with pytest.raises(StoreUnavailable) as raised:
                await SqlAlchemyConversationStore(engine).ping()
    finally:
        await engine.dispose()
    assert isinstance(raised.value.__cause__, exc.TimeoutError)


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        # The raw pool raises the dialect's own DBAPI error for a refused connection, asyncpg's as its cause.
        (_raised_from(Exception("too many clients"), asyncpg.exceptions.TooManyConnectionsError()), True),
        (_raised_from(Exception("duplicate key"), asyncpg.exceptions.UniqueViolationError()), False),
        (exc.OperationalError("SELECT 1", {}, Exception("database is locked")), True),
        (exc.InterfaceError("SELECT 1", {}, Exception("connection is closed")), True),
        (exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), True),
        (exc.TimeoutError("QueuePool limit reached"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError(), True),
        (exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (exc.DBAPIError("SELECT 1", {}, Exception("syntax error")), False),
        (ValueError("not a database problem"), False),
    ],
)
def test_which_errors_mean_the_database_is_unavailable(error: BaseException, unavailable: bool) -> None:
    assert is_unavailable(error) is unavailable
