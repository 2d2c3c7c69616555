"""The alembic migrations: idempotent, reversible, and equal to ``tables.metadata`` on every dialect."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.migrate import (
    LEGACY_VERSION_TABLE,
    VERSION_TABLE,
    alembic_config,
    run_migrations,
    run_migrations_async,
)
from chatcore.adapters.sqlalchemy.tables import metadata

from ..conftest import fresh_database

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
TABLES = {
    "conversations",
    "messages",
    "tasks",
    "idempotency_keys",
    "turn_events",
    "turns",
    "tool_approvals",
    "usage",
    "conversation_aliases",
}


def _not_the_hosts(name: str | None, kind: str, _parents: Any) -> bool:
    """Drift is about chatcore's tables: a host application's ``alembic_version`` beside them is none."""
    return not (kind == "table" and name == LEGACY_VERSION_TABLE)


def _schema_diff(connection: Connection) -> list[Any]:
    opts = {"compare_type": True, "compare_server_default": True, "version_table": VERSION_TABLE}
    context = MigrationContext.configure(connection, opts={**opts, "include_name": _not_the_hosts})
    return list(compare_metadata(context, metadata))


def _state(connection: Connection) -> tuple[str | None, set[str]]:
    revision = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    return revision, set(inspect(connection).get_table_names())


async def inspect_database(url: str) -> tuple[str | None, set[str], list[Any]]:
    """The database's alembic revision, its tables, and how its schema differs from ``tables.metadata``."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            revision, tables = await connection.run_sync(_state)
            diff = await connection.run_sync(_schema_diff)
    finally:
        await engine.dispose()
    return revision, tables, diff


@pytest.fixture
def fresh_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A SQLite file not yet migrated, or the session's PostgreSQL database (migrated once already)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("fresh_sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


async def test_migrations_are_idempotent_and_match_the_tables(database_url: str) -> None:
    await run_migrations_async(database_url)
    await run_migrations_async(database_url)

    revision, tables, diff = await inspect_database(database_url)

    assert revision == HEAD
    assert tables >= TABLES
    assert diff == []


async def test_the_schema_comparison_notices_drift(fresh_sqlite_url: str) -> None:
    await run_migrations_async(fresh_sqlite_url)
    engine = create_engine(fresh_sqlite_url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP INDEX ix_messages_turn_id"))
    await engine.dispose()

    _, _, diff = await inspect_database(fresh_sqlite_url)

    assert [entry[0] for entry in diff] == ["add_index"]


async def test_downgrade_to_base_and_back(fresh_sqlite_url: str) -> None:
    await run_migrations_async(fresh_sqlite_url)
    config = alembic_config(fresh_sqlite_url)

    await _in_thread(command.downgrade, config, "base")
    revision, tables, _ = await inspect_database(fresh_sqlite_url)
    assert (revision, tables & TABLES) == (None, set())

    await run_migrations_async(fresh_sqlite_url)
    revision, tables, diff = await inspect_database(fresh_sqlite_url)
    assert (revision, diff) == (HEAD, [])
    assert tables >= TABLES


REPLICAS_TIMEOUT_SECONDS = 240
MIGRATE = "import sys; from chatcore.adapters.sqlalchemy.migrate import run_migrations; run_migrations(sys.argv[1])"


@pytest.mark.integration
async def test_replicas_migrating_at_once_take_turns(postgres_server: URL) -> None:
    """Processes starting together: without env.py's advisory lock, all but one would fail creating the tables."""
    name = f"chatcore_test_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(postgres_server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = postgres_server.set(database=name).render_as_string(hide_password=False)
        try:
            replicas = [
                await asyncio.create_subprocess_exec(sys.executable, "-c", MIGRATE, url, stderr=asyncio.subprocess.PIPE)
                for _ in range(3)
            ]
            try:
                # Together: each replica's stderr is drained while the others run. The bound is generous because three
                # interpreters importing SQLAlchemy and Alembic at once take tens of seconds on a loaded 2-core machine.
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*(replica.communicate() for replica in replicas)), timeout=REPLICAS_TIMEOUT_SECONDS
                )
            finally:
                for replica in replicas:
                    if replica.returncode is None:
                        replica.kill()
                        await replica.wait()
            revision, _, diff = await inspect_database(url)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()

    assert [replica.returncode for replica in replicas] == [0, 0, 0], [err.decode()[-500:] for _, err in outcomes]
    assert (revision, diff) == (HEAD, [])


TWO_AT_ONCE = """
import asyncio, sys
from chatcore.adapters.sqlalchemy.migrate import run_migrations_async
async def main():
    await asyncio.gather(*(run_migrations_async(url) for url in sys.argv[1:]))
asyncio.run(main())
"""


async def test_migrating_two_databases_at_once_in_one_process_is_safe(tmp_path: Path) -> None:
    """Alembic's global context is not thread-safe; run_migrations must serialise. In a child: a regression hangs."""
    urls = [f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("one.db", "two.db")]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TWO_AT_ONCE, *urls, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, errors = await asyncio.wait_for(child.communicate(), timeout=60)
    except TimeoutError:
        child.kill()
        await child.wait()
        pytest.fail("migrating two databases at once deadlocked")

    assert child.returncode == 0, errors.decode()[-1000:]
    for url in urls:
        revision, _, diff = await inspect_database(url)
        assert (revision, diff) == (HEAD, [])


def test_run_migrations_works_from_any_directory_without_an_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    database = tmp_path / "data" / "chatcore.db"
    database.parent.mkdir()

    run_migrations(f"sqlite:///{database}")

    assert database.exists()
    assert list(elsewhere.iterdir()) == []


def test_the_config_keeps_a_password_with_percent_signs_and_finds_the_scripts() -> None:
    config = alembic_config("postgres://user:p%25ss@db.example.com:5432/app?sslmode=require")

    assert config.attributes["url"] == "postgresql+asyncpg://user:p%25ss@db.example.com:5432/app?ssl=require"
    script_location = Path(str(config.get_main_option("script_location")))
    assert (script_location / "env.py").is_file()
    assert (script_location / "script.py.mako").is_file()


async def _in_thread(function: Any, *args: Any) -> None:
    """Alembic commands start their own event loop, so they run off the test's loop."""
    await asyncio.to_thread(function, *args)


# Hosted in another application's database: a version table of chatcore's own, and optionally a schema.


def _version_in(connection: Connection, table: str) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": table}).get_current_revision()


async def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _versions(url: str) -> tuple[str | None, str | None]:
    """(chatcore's version table, the legacy/host ``alembic_version``)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            ours = await connection.run_sync(_version_in, VERSION_TABLE)
            legacy = await connection.run_sync(_version_in, LEGACY_VERSION_TABLE)
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return ours, legacy if LEGACY_VERSION_TABLE in tables else "<no table>"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A database with nothing in it yet: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    async with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


async def test_chatcore_keeps_its_revision_beside_the_host_applications_alembic_version(empty_database: str) -> None:
    await _execute(
        empty_database,
        f"CREATE TABLE {LEGACY_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        f"INSERT INTO {LEGACY_VERSION_TABLE} VALUES ('host_0007')",
    )

    await run_migrations_async(empty_database)
    await run_migrations_async(empty_database)

    assert await _versions(empty_database) == (HEAD, "host_0007")
    revision, tables, diff = await inspect_database(empty_database)
    assert (revision, diff) == (HEAD, [])
    assert tables >= TABLES | {VERSION_TABLE, LEGACY_VERSION_TABLE}


async def test_a_database_migrated_before_the_own_version_table_carries_its_revision_over(empty_database: str) -> None:
    """Older chatcore kept its revision in ``alembic_version``: the next migrate moves it, and creates nothing twice."""
    await run_migrations_async(empty_database)
    await _execute(  # the version table as Alembic made it under its default name
        empty_database,
        f"DROP TABLE {VERSION_TABLE}",
        f"CREATE TABLE {LEGACY_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
        f"CONSTRAINT {LEGACY_VERSION_TABLE}_pkc PRIMARY KEY (version_num))",
        f"INSERT INTO {LEGACY_VERSION_TABLE} VALUES ('{HEAD}')",
    )
    assert await _versions(empty_database) == (None, HEAD)  # what an older deployment looks like

    await run_migrations_async(empty_database)

    assert await _versions(empty_database) == (HEAD, "<no table>")
    revision, _, diff = await inspect_database(empty_database)
    assert (revision, diff) == (HEAD, [])


def _in_schema(connection: Connection, schema: str) -> tuple[str | None, set[str], set[str], list[Any]]:
    """The revision in the schema's version table, the schema's tables, the default schema's, and the drift."""
    revision = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    ).get_current_revision()
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "version_table": VERSION_TABLE,
            "version_table_schema": schema,
            "include_schemas": True,
            "include_name": lambda name, kind, _parents: kind != "schema" or name == schema,
        },
    )
    in_schema = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(in_schema, schema=schema)
    diff = list(compare_metadata(context, in_schema))
    inspector = inspect(connection)
    return revision, set(inspector.get_table_names(schema=schema)), set(inspector.get_table_names()), diff


@pytest.mark.integration
async def test_chatcores_tables_can_live_in_their_own_postgresql_schema(postgres_server: URL) -> None:
    async with fresh_database(postgres_server) as url:
        await _execute(url, "CREATE TABLE orders (id integer PRIMARY KEY)")  # the host application's

        await run_migrations_async(url, schema="chat")
        await run_migrations_async(url, schema="chat")

        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                revision, in_schema, in_public, diff = await connection.run_sync(_in_schema, "chat")
        finally:
            await engine.dispose()

    assert (revision, diff) == (HEAD, [])
    assert in_schema >= TABLES | {VERSION_TABLE}
    assert in_public == {"orders"}


@pytest.mark.parametrize(
    ("url", "schema", "problem"),
    [
        ("postgresql://db/app", "Chat", "lower-case letters"),
        ("postgresql://db/app", "chat; DROP TABLE orders", "lower-case letters"),
        ("postgresql://db/app", "1chat", "lower-case letters"),
        ("sqlite:///chatcore.db", "chat", "needs PostgreSQL"),
    ],
)
def test_a_schema_name_is_checked(url: str, schema: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        alembic_config(url, schema=schema)
