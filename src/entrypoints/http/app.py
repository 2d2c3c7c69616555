"""The Litestar app factory: a container in, an ASGI app out. Nothing connects until the app starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import Message, Scope

import chatcore
from chatcore.entrypoints.container import Container, build_container
from chatcore.entrypoints.http.controllers import ChatController, HealthController
from chatcore.entrypoints.http.errors import EXCEPTION_HANDLERS
from chatcore.entrypoints.http.request_id import RequestIdMiddleware
from chatcore.entrypoints.settings import Settings
from chatcore.service import ChatService

logger = logging.getLogger("chatcore.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(container: Container) -> Litestar:
    settings: Settings = container.settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        initialising = container.init_resources()
        if initialising is not None:
            await initialising
        service = container.chat_service()
        app.state.service = service if isinstance(service, ChatService) else await service
        try:
            yield
        finally:
            stopping = container.shutdown_resources()
            if stopping is not None:
                await stopping

    async def add_security_headers(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            headers = MutableScopeHeaders.from_message(message)
            for name, value in SECURITY_HEADERS.items():
                if name not in headers:
                    headers[name] = value

    return Litestar(
        route_handlers=[ChatController, HealthController],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[RequestIdMiddleware],
        before_send=[add_security_headers],
        request_max_body_size=settings.max_body_bytes,
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        openapi_config=OpenAPIConfig(
            title="chatcore",
            version=chatcore.__version__,
            description="A stateless chat backend for tool-using AI assistants.",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The factory ``chatcore serve`` hands to uvicorn (each worker builds its own app from the environment)."""
    return create_app(build_container(Settings.from_env()))
