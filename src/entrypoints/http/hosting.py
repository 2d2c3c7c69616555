"""chatcore inside another application: its HTTP API under a path prefix, with the host's verifier, tools and engine.

``create_asgi_app`` builds chatcore's own Litestar app from the composition root with the host's adapters put in
place of the configured ones; any ASGI framework mounts it (``app.mount("/chat", chat)`` in FastAPI or
Starlette, which do not run a mounted app's lifespan: enter ``chat.lifespan()`` in the host's). In a Litestar
host, ``ChatcorePlugin`` mounts it and runs its lifespan with the host's. chatcore's routes, error table, auth
middleware and state stay its own, so nothing of the host's app (its state, exception handlers, middleware)
changes, and the same app serves both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from dependency_injector import providers
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.handlers import asgi
from litestar.plugins import InitPluginProtocol
from litestar.types import Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.engine import database_url_from, in_schema
from chatcore.adapters.sqlalchemy.migrate import run_migrations_async, run_migrations_on
from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.ports import LLMAgent, TokenVerifier, ToolRegistry
from chatcore.tools import FunctionToolRegistry

Tools = ToolRegistry | Iterable[Callable[..., Any]]
"""A ``ToolRegistry``, or ``@tool`` functions (put in a ``FunctionToolRegistry``)."""


def create_asgi_app(
    *,
    verifier: TokenVerifier,
    tools: Tools | None = None,
    engine: AsyncEngine | None = None,
    agent: LLMAgent | None = None,
    settings: Settings | None = None,
    schema: str | None = None,
    migrate: bool = True,
) -> Litestar:
    """chatcore's HTTP API as an ASGI app, for the host to mount under a prefix of its choice.

    - ``verifier``: the host's ``TokenVerifier`` (any object with ``async verify(token) -> Principal``).
    - ``tools``: the host's tools; None keeps the configured ones (the todo toolset).
    - ``engine``: the host's ``AsyncEngine`` (chatcore neither disposes nor reconfigures it); None: chatcore's
      own engine on ``settings.database_url``.
    - ``agent``: an ``LLMAgent``; None: the model the settings name (``CHATCORE_LLM``...).
    - ``settings``: None reads the ``CHATCORE_*`` environment (``Settings.from_env()``).
    - ``schema``: the PostgreSQL schema for chatcore's tables (else ``settings.db_schema``, CHATCORE_DB_SCHEMA).
    - ``migrate``: apply chatcore's migrations when the app starts (its own version table, in that schema).
    """
    settings = settings if settings is not None else Settings.from_env()
    if schema is not None:
        settings = dataclasses.replace(settings, db_schema=schema)
    container = build_container(settings)
    container.verifier.override(providers.Object(verifier))
    if tools is not None:
        container.tools.override(providers.Object(_registry(tools)))
    if agent is not None:
        container.agent.override(providers.Object(agent))
    if engine is not None:
        container.engine.override(providers.Object(in_schema(engine, settings.db_schema)))

    async def apply_migrations() -> None:
        if engine is not None:
            await run_migrations_on(engine, schema=settings.db_schema)
        else:
            await run_migrations_async(database_url_from(settings.database_url), schema=settings.db_schema)

    return create_app(container, before_start=[apply_migrations] if migrate else [])


def _registry(tools: Tools) -> ToolRegistry:
    if hasattr(tools, "list_tools") and hasattr(tools, "call"):
        registry: ToolRegistry = tools  # type: ignore[assignment]
        return registry
    return FunctionToolRegistry(list(tools))


@dataclass(eq=False)  # Litestar keeps its plugins in a set
class ChatcorePlugin(InitPluginProtocol):
    """chatcore's HTTP API under ``path`` in the host's own ``Litestar(plugins=[ChatcorePlugin(...)])``.

    Takes ``create_asgi_app``'s arguments; chatcore starts and stops with the host app.
    """

    verifier: TokenVerifier
    path: str = "/chat"
    tools: Tools | None = None
    engine: AsyncEngine | None = None
    agent: LLMAgent | None = None
    settings: Settings | None = None
    schema: str | None = None
    migrate: bool = True
    app: Litestar | None = field(default=None, init=False, repr=False)
    """chatcore's own app, once the host app is built."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        chat = self.app = create_asgi_app(
            verifier=self.verifier,
            tools=self.tools,
            engine=self.engine,
            agent=self.agent,
            settings=self.settings,
            schema=self.schema,
            migrate=self.migrate,
        )

        async def forward(scope: Scope, receive: Receive, send: Send) -> None:
            await chat(scope, receive, send)

        app_config.route_handlers.append(asgi(self.path, is_mount=True, copy_scope=True)(forward))
        app_config.lifespan.append(_lifespan_of(chat))
        return app_config


def _lifespan_of(chat: Litestar) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    def lifespan(_host: Litestar) -> AbstractAsyncContextManager[None]:
        return chat.lifespan()

    return lifespan
