"""The real HTTP app on the real database: apps are built by the composition root, as in production."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from dependency_injector import providers
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import URL

from chatcore.adapters.auth.hs256 import mint_hs256_token
from chatcore.adapters.sqlalchemy.migrate import run_migrations_async
from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.ports import LLMAgent

from ..conftest import fresh_database

SECRET = "integration-test-secret-0123456789abcdef"

AppClient = Callable[..., AbstractAsyncContextManager[AsyncTestClient[Any]]]


def token_for(user_id: str, email: str | None = None, ttl: int = 600) -> str:
    return mint_hs256_token(SECRET, user_id=user_id, email=email, ttl_seconds=ttl)


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user_id, f'{user_id}@example.com')}"}


@pytest.fixture
def app_client(postgres_url: str) -> AppClient:
    """Open a client on a fresh app instance over the shared test database; an agent fake may replace the model."""

    @asynccontextmanager
    async def open_client(agent: LLMAgent | None = None, **overrides: Any) -> AsyncIterator[AsyncTestClient[Any]]:
        settings = Settings(**{"database_url": postgres_url, "auth_secret": SECRET, **overrides})
        container = build_container(settings)
        if agent is not None:
            container.agent.override(providers.Object(agent))
        async with AsyncTestClient(app=create_app(container)) as client:
            yield client

    return open_client


@pytest_asyncio.fixture(loop_scope="session")
async def own_database(postgres_server: URL) -> AsyncIterator[str]:
    """A fresh, migrated database of the test's own, for tests that look at whole tables (``chatcore gc`` deletes
    across users)."""
    async with fresh_database(postgres_server) as url:
        await run_migrations_async(url)
        yield url
