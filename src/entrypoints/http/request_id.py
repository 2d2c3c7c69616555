"""Every response carries X-Request-ID; the id also tags the logs of the request that made it."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bound_contextvars

HEADER = "x-request-id"
_SAFE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_SCOPE_KEY = "chatcore.request_id"


def request_id_of(scope: Any) -> str | None:
    value = scope.get(_SCOPE_KEY) if isinstance(scope, dict) else None
    return value if isinstance(value, str) else None


class RequestIdMiddleware:
    """Reuses a well-formed incoming X-Request-ID (so a proxy's id follows the request), else makes one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), "")
        request_id = incoming if _SAFE.match(incoming) else uuid.uuid4().hex
        scope[_SCOPE_KEY] = request_id  # type: ignore[literal-required]  # our own scope key

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers[HEADER] = request_id
            await send(message)

        with bound_contextvars(request_id=request_id):  # every log line of this request carries its id
            await self.app(scope, receive, send_with_id)
