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
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.migrate import alembic_config, run_migrations, run_migrations_async
from chatcore.adapters.sqlalchemy.tables import metadata

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
TABLES = {"conversations", "messages", "tasks", "idempotency_keys", "turn_events", "turns", "tool_approvals"}


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, metadata))


def _state(connection: Connection) -> tuple[str | None, set[str]]:
    return MigrationContext.configure(connection).get_current_revision(), set(inspect(connection).get_table_names())


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
            outcomes = [await asyncio.wait_for(replica.communicate(), timeout=60) for replica in replicas]
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
