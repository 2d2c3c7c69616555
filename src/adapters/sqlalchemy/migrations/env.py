"""Alembic environment: runs the migrations on an async engine, PostgreSQL (asyncpg) or SQLite (aiosqlite).

Configured by ``chatcore.adapters.sqlalchemy.migrate`` without an alembic.ini: the
URL arrives in ``config.attributes["url"]`` (no ConfigParser interpolation of a
password's ``%``), or in ``sqlalchemy.url`` for someone running the alembic CLI with
their own ini. A caller may also hand over an open sync ``connection`` attribute.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
from chatcore.adapters.sqlalchemy.tables import metadata

MIGRATION_LOCK_KEY = 0x63686174636F7265
"""PostgreSQL advisory lock ("chatcore" in hex) held while migrating, so replicas starting together take turns."""

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return database_url_from(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite can roll DDL back too once SQLAlchemy emits BEGIN (see engine._sqlite_setup).
        transactional_ddl=True,
        # SQLite's ALTER TABLE is limited: autogenerate "move and copy" batches there.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations(_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
