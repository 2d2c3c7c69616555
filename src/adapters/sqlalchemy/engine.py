"""Async engines for the SQL stores: URL normalisation and per-dialect connection setup.

Nothing here connects: engines open connections lazily, on their first use, so
building the application never needs a reachable database.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./chatcore.db"
"""Used when no URL is configured: a file in the working directory, so ``chatcore serve`` works out of the box."""

SQLITE_BUSY_TIMEOUT_MS = 5_000
"""How long a SQLite writer waits for another writer's lock before failing with 'database is locked'."""

PING_AFTER_IDLE_SECONDS = 10.0
"""A pooled PostgreSQL connection left idle longer than this is pinged before it is used again."""

_IDLE_SINCE = "chatcore_idle_since"

_LIBPQ_ONLY_PARAMETERS = ("channel_binding",)
"""libpq URL parameters that asyncpg rejects as unknown keyword arguments (hosted PostgreSQL URLs carry them)."""


SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A PostgreSQL schema name that needs no quoting anywhere: lower-case letters, digits and underscores."""


def check_schema(schema: str | None, url: str) -> str | None:
    """The schema for chatcore's tables (``CHATCORE_DB_SCHEMA``), checked; None or blank: the default schema.

    Raises ValueError for a name that would need quoting, or for a database other than PostgreSQL.
    """
    if schema is None or not schema.strip():
        return None
    schema = schema.strip()
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            "a schema name is at most 63 lower-case letters, digits and underscores, not starting with a digit; "
            f"not {schema!r}"
        )
    if make_url(database_url_from(url)).get_backend_name() != "postgresql":
        raise ValueError("a schema for chatcore's tables needs PostgreSQL")
    return schema


def database_url_from(value: str | None) -> str:
    """The async SQLAlchemy URL for a configured database URL.

    Hosting providers hand out ``postgres://`` / ``postgresql://`` URLs with libpq
    parameters (``sslmode``, ``channel_binding``); asyncpg needs its own driver name and
    spells ``sslmode`` as ``ssl``. An empty value means the local SQLite file.
    """
    if value is None or not value.strip():
        return DEFAULT_DATABASE_URL
    value = value.strip()
    scheme, separator, rest = value.partition("://")
    if not separator:
        # The value may hold a password: never echo it back.
        raise ValueError("database URL must look like scheme://...")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql"):
        return _asyncpg_query(make_url(f"postgresql+asyncpg://{rest}"))
    if scheme == "postgresql+asyncpg":
        return _asyncpg_query(make_url(value))
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    return value


def _asyncpg_query(url: URL) -> str:
    query = dict(url.query)
    if "sslmode" in query:
        query.setdefault("ssl", query.pop("sslmode"))
    for name in _LIBPQ_ONLY_PARAMETERS:
        query.pop(name, None)
    return url.set(query=query).render_as_string(hide_password=False)


def create_engine(
    url: str,
    *,
    pool_size: int = 30,
    max_overflow: int = 0,
    pool_timeout: float = 10.0,
    echo: bool = False,
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
    schema: str | None = None,
) -> AsyncEngine:
    """An AsyncEngine for ``url`` (normalised by ``database_url_from`` first), tuned per dialect.

    With ``schema`` (PostgreSQL), chatcore's tables are looked for in that schema (``in_schema``).

    PostgreSQL: a connection dropped by a restart or an idle timeout is replaced instead of failing
    a request (see ``_replace_dead_connections``); ``pool_timeout`` also bounds a new connection's handshake.
    SQLite: WAL (readers do not block the writer), a busy timeout instead of instant
    'database is locked', foreign keys on, and transactions begun by SQLAlchemy (see ``_sqlite_setup``).
    """
    parsed = make_url(database_url_from(url))
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        engine = create_async_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=1_800,
            # jsonb holds strict JSON only (no NaN), which msgspec reads several times faster than json.loads:
            # a long conversation's window brings back a tool-call list in every other row.
            json_deserializer=msgspec.json.decode,
            # UTC sessions: timestamps that PostgreSQL itself writes as text (the turn's history window, in JSON)
            # carry +00:00; values read as timestamptz are aware UTC either way.
            connect_args={
                "timeout": pool_timeout,
                "server_settings": {"application_name": "chatcore", "TimeZone": "UTC"},
            },
        )
        _replace_dead_connections(engine, ping_after_idle_seconds)
        return in_schema(engine, check_schema(schema, url))
    check_schema(schema, url)  # a schema needs PostgreSQL
    if backend == "sqlite":
        options: dict[str, Any] = {}
        if not _is_sqlite_memory(parsed):
            options = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
        engine = create_async_engine(parsed, echo=echo, **options)
        _sqlite_setup(engine)
        return engine
    return create_async_engine(
        parsed, echo=echo, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
    )


def in_schema(engine: AsyncEngine, schema: str | None) -> AsyncEngine:
    """``engine`` with chatcore's tables in ``schema``: the same pool, each statement's table names qualified.

    SQLAlchemy's ``schema_translate_map`` maps the tables' schema (none) to ``schema`` as statements are compiled
    (cached statements too), so a host application's own engine serves chatcore unchanged. Statements compiled
    ahead for asyncpg take the map from the engine's execution options.
    """
    if schema is None:
        return engine
    return engine.execution_options(schema_translate_map={None: schema})


def _replace_dead_connections(engine: AsyncEngine, ping_after_idle_seconds: float) -> None:
    """``pool_pre_ping``'s protection without its three round trips (BEGIN, ``;``, ROLLBACK) per checkout.

    A server that goes away (restart, failover, an idle timeout, a reset) closes the socket, and
    asyncpg marks the connection closed as soon as the event loop sees that: checking that costs
    nothing. A connection idle long enough to have been dropped silently (a NAT or proxy timeout)
    is pinged as well. Either way ``DisconnectionError`` makes the pool replace it before use,
    SQLAlchemy's documented way; a connection in steady use is never pinged.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if record.driver_connection is None or record.driver_connection.is_closed():
            raise exc.DisconnectionError("the connection was closed")
        if idle_since is not None and time.monotonic() - idle_since > ping_after_idle_seconds:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as error:
                raise exc.DisconnectionError("the connection did not answer a ping") from error


def _is_sqlite_memory(url: URL) -> bool:
    """An in-memory database gets SQLAlchemy's single-connection StaticPool, which takes no pool sizes."""
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_setup(engine: AsyncEngine) -> None:
    """Per-connection pragmas, and real transactions.

    The sqlite3 driver's legacy mode does not BEGIN before SELECT or DDL, so a migration
    would not be atomic and a read would not be repeatable. SQLAlchemy's documented fix:
    switch the driver's transaction handling off and emit BEGIN ourselves. A deferred BEGIN
    suffices because every writing transaction of the stores starts with its write, so a
    writer waits on the busy timeout instead of failing to upgrade a read lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")
