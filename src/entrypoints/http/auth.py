"""Authentication as a guard: it runs before the body is read, so a bad token is 401 whatever the body."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from chatcore.model import Principal
from chatcore.service import ChatService

PRINCIPAL_KEY = "principal"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other scheme or shape."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


async def require_path_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    service: ChatService = connection.app.state.service
    principal = await service.authenticate(
        bearer_token(connection.headers.get("authorization")), str(connection.path_params.get("user_id", ""))
    )
    connection.state[PRINCIPAL_KEY] = principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.state[PRINCIPAL_KEY]
    assert isinstance(principal, Principal)
    return principal
