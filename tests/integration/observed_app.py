"""The real app over the test database, handing back its container too (the engine, metrics and tracing live there)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from dependency_injector import providers
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.entrypoints.container import Container, build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.ports import LLMAgent

from .conftest import SECRET


@asynccontextmanager
async def observed_app(
    database_url: str,
    agent: LLMAgent | None = None,
    tracing: Any = None,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[AsyncTestClient[Any], Container]]:
    container = build_container(Settings(database_url=database_url, auth_secret=SECRET, **overrides))
    if agent is not None:
        container.agent.override(providers.Object(agent))
    if clock is not None:
        container.clock.override(providers.Object(clock))
    if tracing is not None:
        container.tracing.override(providers.Object(tracing))
    async with AsyncTestClient(app=create_app(container)) as client:
        yield client, container


async def engine_of(container: Container) -> AsyncEngine:
    engine = container.engine()
    resolved = await engine if inspect.isawaitable(engine) else engine
    assert isinstance(resolved, AsyncEngine)
    return resolved
