"""Fixtures the harness's tests share: scratch databases on the local PostgreSQL, as ``make bench`` uses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from bench.database import database_dsn, fresh_database, migrate

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new, empty database, dropped afterwards; the test fails (never skips) without PostgreSQL."""
    try:
        await (await asyncpg.connect(ADMIN_DSN)).close()
    except OSError as error:
        pytest.fail(f"the harness's tests need PostgreSQL at {ADMIN_DSN}: {error}")
    async with fresh_database(ADMIN_DSN, keep=False) as name:
        yield name


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """The name of an empty database of this test's own."""
    async with scratch_database() as name:
        yield name


@pytest.fixture(scope="module")
async def dsn() -> AsyncIterator[str]:
    """A database with chatcore's tables, shared by a module's tests."""
    async with scratch_database() as name:
        dsn = database_dsn(ADMIN_DSN, name)
        await migrate(dsn.replace("postgresql://", "postgresql+asyncpg://"))
        yield dsn
