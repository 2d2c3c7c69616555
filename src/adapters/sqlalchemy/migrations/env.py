"""Alembic environment: runs the migrations on an async engine, PostgreSQL (asyncpg) or SQLite (aiosqlite).

Configured by ``chatcore.adapters.sqlalchemy.migrate`` without an alembic.ini: the
URL arrives in ``config.attributes["url"]`` (no ConfigParser interpolation of a
password's ``%``), or in ``sqlalchemy.url`` for someone running the alembic CLI with
their own ini. A caller may also hand over an open sync ``connection`` attribute. The schema
for chatcore's tables arrives in ``config.attributes["schema"]`` (None: the default schema).
Why the version table has its own name, and how an older database's is carried over: ``migrate``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
from chatcore.adapters.sqlalchemy.migrate import LEGACY_VERSION_TABLE, VERSION_TABLE
from chatcore.adapters.sqlalchemy.tables import metadata

MIGRATION_LOCK_KEY = 0x63686174636F7265
"""PostgreSQL advisory lock ("chatcore" in hex) held while migrating, so replicas starting together take turns."""

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return database_url_from(url)


def _schema() -> str | None:
    schema: str | None = config.attributes.get("schema")
    return schema


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        version_table_schema=_schema(),
        # SQLite can roll DDL back too once SQLAlchemy emits BEGIN (see engine._sqlite_setup).
        transactional_ddl=True,
        # SQLite's ALTER TABLE is limited: autogenerate "move and copy" batches there.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    schema = _schema()
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        if schema is not None:
            # The migrations name no schema: for this transaction, unqualified names are chatcore's schema's.
            # (A checked name: lower-case letters, digits and underscores only.)
            connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            connection.exec_driver_sql(f"SET LOCAL search_path TO {schema}")
        else:
            _carry_over_legacy_version(connection)
        context.run_migrations()


def _carry_over_legacy_version(connection: Connection) -> None:
    """A database migrated before chatcore's version table had its own name: its revision moves over (``migrate``).

    Only into the default schema: with a schema, the old tables are not where the revision would say they are.
    """
    ours = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    if ours.get_current_heads():
        return
    legacy = MigrationContext.configure(connection, opts={"version_table": LEGACY_VERSION_TABLE})
    heads = legacy.get_current_heads()
    script = ScriptDirectory.from_config(config)
    revisions = {revision.revision for revision in script.walk_revisions()}
    if len(heads) != 1 or heads[0] not in revisions:
        return  # no old table, or the host application's own history
    ours.stamp(script, heads[0])
    connection.exec_driver_sql(f"DROP TABLE {LEGACY_VERSION_TABLE}")


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
