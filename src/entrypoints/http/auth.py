"""Authentication before anything else: a bad token is 401 whatever the body, and before any rate limit.

``BearerAuthenticationMiddleware`` verifies the token on the API routes and puts the
``Principal`` in ``scope["user"]``, so the rate limiter behind it can count by verified
user. The ``require_path_user`` guard (the chat route calls ``authorize_path_user``, its body,
itself) then only reuses that principal; it authenticates by itself wherever a controller is
mounted without the middleware, so no ``/api/{user_id}`` route is ever open. Errors are the
domain's (Unauthenticated 401, Forbidden 403, AuthUnavailable 503), answered by the one handler
in ``errors.py``.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from chatcore.model import Principal
from chatcore.service import ChatService

PRINCIPAL_KEY = "principal"
BEARER_SECURITY = "BetterAuthJWT"
"""The OpenAPI security scheme of the API routes: ``Authorization: Bearer <Better Auth JWT>``."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other scheme or shape."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal of the request's bearer token, who must be the path's ``user_id``."""
    service: ChatService = connection.app.state.service
    return await service.authenticate(
        bearer_token(connection.headers.get("authorization")), str(connection.path_params.get("user_id", ""))
    )


class BearerAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    """Verifies the bearer token of every API request before the route's other middleware and the body."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        return AuthenticationResult(user=await authenticate(connection), auth=None)


async def require_path_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    await authorize_path_user(connection)


async def authorize_path_user(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """What ``require_path_user`` does, called by a handler itself: Litestar's guard machinery copies the
    route handler on every guarded request, a cost the chat route (the hot path) does not pay."""
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal) or principal.user_id != connection.path_params.get("user_id"):
        principal = await authenticate(connection)
    connection.state[PRINCIPAL_KEY] = principal
    return principal


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.state[PRINCIPAL_KEY]
    assert isinstance(principal, Principal)
    return principal
