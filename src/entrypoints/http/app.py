"""The Litestar app factory: a container in, an ASGI app out. Nothing connects until the app starts."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Message, Scope

import chatcore
from chatcore.entrypoints.container import Container, build_container
from chatcore.entrypoints.http.auth import BEARER_SECURITY, BearerAuthenticationMiddleware
from chatcore.entrypoints.http.controllers import ChatController, HealthController
from chatcore.entrypoints.http.conversations import ConversationsController, attach_conversations, detach_conversations
from chatcore.entrypoints.http.errors import EXCEPTION_HANDLERS
from chatcore.entrypoints.http.frontends import AgUiController, AiSdkController, attach_frontends
from chatcore.entrypoints.http.json_bodies import JsonBodyRequest
from chatcore.entrypoints.http.page import PageController
from chatcore.entrypoints.http.rate_limit import RATE_LIMIT_STORE, rate_limit_config
from chatcore.entrypoints.http.request_id import HEADER as REQUEST_ID_HEADER
from chatcore.entrypoints.http.request_id import RequestIdMiddleware, request_id_of
from chatcore.entrypoints.http.usage import UsageController
from chatcore.entrypoints.logging import configure_logging
from chatcore.entrypoints.metrics import ObservabilityMiddleware, metrics_route, record_outcomes
from chatcore.entrypoints.settings import Settings
from chatcore.retention import Janitor
from chatcore.service import ChatService

logger = logging.getLogger("chatcore.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
EXPOSED_HEADERS = ("Retry-After", "X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
"""What a browser frontend on an allowed origin may read: when to retry, and the id to quote in a bug report."""


_SECURITY_HEADERS_RAW = tuple((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items())
_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode()


def add_missing_headers(message: Message, scope: Scope) -> None:
    """The security headers, and the request id for errors answered outside a route (routing, auth, rate limit),
    unless the response set them itself. On the raw header list: every response passes here."""
    raw: Iterable[tuple[bytes, bytes]] = message.get("headers") or ()  # type: ignore[assignment]
    headers = list(raw)
    present = {name.lower() for name, _ in headers}
    headers.extend(header for header in _SECURITY_HEADERS_RAW if header[0] not in present)
    if _REQUEST_ID_RAW not in present:
        headers.append((_REQUEST_ID_RAW, (request_id_of(scope) or uuid.uuid4().hex).encode()))
    message["headers"] = headers  # type: ignore[typeddict-unknown-key]


async def _started_janitor(container: Container) -> asyncio.Task[None]:
    """The janitor (``chatcore.retention``), sweeping in the background while the app serves."""
    janitor = container.janitor()
    janitor = janitor if isinstance(janitor, Janitor) else await janitor
    return asyncio.create_task(janitor.run(), name="chatcore-janitor")


def create_app(container: Container, *, before_start: Sequence[Callable[[], Awaitable[None]]] = ()) -> Litestar:
    """The app of ``container``; ``before_start`` runs first when it starts (a hosted app's migrations)."""
    settings: Settings = container.settings()
    metrics = container.metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        for step in before_start:
            await step()
        initialising = container.init_resources()
        if initialising is not None:
            await initialising
        service = container.chat_service()
        app.state.service = service if isinstance(service, ChatService) else await service
        await attach_conversations(app.state, container, app.state.service, dev_mode=settings.dev_mode)
        usage = container.usage_history()
        app.state.usage = await usage if inspect.isawaitable(usage) else usage
        await attach_frontends(app.state, container)
        store = container.rate_limit_store()
        store = await store if inspect.isawaitable(store) else store
        if store is not None:
            app.stores.register(RATE_LIMIT_STORE, store, allow_override=True)
        # What start-up built (modules, routes, clients) lives as long as the process: frozen, the collector's
        # full passes under load skip it instead of walking it all each time.
        app.state.janitor = janitor = await _started_janitor(container) if settings.janitor else None
        gc.freeze()
        try:
            yield
        finally:
            if janitor is not None:
                janitor.cancel()
                await asyncio.wait({janitor})
            await detach_conversations(app.state)
            stopping = container.shutdown_resources()
            if stopping is not None:
                await stopping

    async def add_security_headers(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            add_missing_headers(message, scope)

    # The API: authenticated in middleware, then counted per verified user. Its controllers go in this router.
    api = Router(
        path="/",
        route_handlers=[ChatController, ConversationsController, UsageController, AiSdkController, AgUiController],
        middleware=[
            BearerAuthenticationMiddleware,
            *([rate_limit_config(settings.rate_limit).middleware] if settings.rate_limit else []),
        ],
    )

    return Litestar(
        route_handlers=[api, HealthController, PageController, metrics_route(metrics)],
        lifespan=[lifespan],
        exception_handlers=record_outcomes(EXCEPTION_HANDLERS),
        middleware=[
            RequestIdMiddleware,
            DefineMiddleware(ObservabilityMiddleware, metrics=metrics, tracing=container.tracing),
        ],
        logging_config=None,  # chatcore.entrypoints.logging owns logging; Litestar's default would replace it
        before_send=[add_security_headers],
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonBodyRequest,  # deeply nested JSON bodies are 400, on every route
        cors_config=(
            CORSConfig(allow_origins=list(settings.cors_origins), expose_headers=list(EXPOSED_HEADERS))
            if settings.cors_origins
            else None
        ),
        openapi_config=OpenAPIConfig(
            title="chatcore",
            version=chatcore.__version__,
            description="A stateless chat backend for tool-using AI assistants.",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER_SECURITY: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="A Better Auth JWT (jwt plugin, verified with its JWKS) or an HS256 token",
                    )
                }
            ),
        ),
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The factory ``chatcore serve`` hands to uvicorn (each worker builds its own app from the environment)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    return create_app(build_container(settings))
