"""A per-user request limit on the API, with Litestar's own rate-limit middleware and stores.

The limit keys on the principal the authentication middleware put in ``scope["user"]``:
a verified token's subject, never the client address (many users share one NAT or
proxy) and never a claim read from an unverified token (anyone could then spend
someone else's quota with forged tokens). Requests that fail authentication are
refused before they reach this middleware, so they cost nobody's quota.

Counts live in the app's ``RATE_LIMIT_STORE``: this process's memory by default, or
Redis (``CHATCORE_REDIS_URL``) so that every replica counts against one limit.
Litestar's limiter reads and writes the count in two steps, so replicas hit by the
same user at the same instant may let a request or two past the limit; it is a guard
against abuse and runaway clients, not an exact meter. When the store cannot be
reached the request is let through and the outage is logged: the limiter must not
become the reason the chat is down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import DURATION_VALUES, CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.types import Receive, Scope, Send

from chatcore.entrypoints.settings import RateLimit
from chatcore.model import Principal

logger = logging.getLogger("chatcore.http.rate_limit")

RATE_LIMIT_STORE = "chatcore_rate_limit"
"""The name of the store in the app's store registry; the container provides it."""
SKIP_RATE_LIMIT = "skip_rate_limit"
"""A handler opts out with ``opt={SKIP_RATE_LIMIT: True}`` (a cheap read a page polls); it stays authenticated."""


def store_errors() -> tuple[type[Exception], ...]:
    """What an unreachable or failing store raises (Redis connection refused, reset, timed out).

    A function, used as ``except store_errors()``: Python evaluates that only once an error is on its way,
    so redis (and the OpenTelemetry it pulls in) is imported by processes that use the Redis store, not by all.
    """
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


def authenticated_user(request: Request[Any, Any, Any]) -> Principal | None:
    """The principal the authentication middleware verified, if it ran for this request."""
    user = request.scope.get("user")
    return user if isinstance(user, Principal) else None


def user_key(request: Request[Any, Any, Any]) -> str:
    principal = authenticated_user(request)
    if principal is None:  # only reached if the middleware order is broken: never fall back to the client address
        raise RuntimeError("the rate limit runs after authentication; no authenticated user on this request")
    return principal.user_id


def is_authenticated(request: Request[Any, Any, Any]) -> bool:
    """Only authenticated requests are counted (CORS preflights and other unauthenticated OPTIONS are not)."""
    return authenticated_user(request) is not None


class UserRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's limiter, keyed by user, with ``Retry-After`` on a 429 and failing open on a store outage."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as refused:
            # Only the limiter itself raises this here: the handler's errors are answered inside the route.
            headers = dict(refused.headers or {})
            retry_after = max(1, _int(headers.get(self.config.rate_limit_reset_header_key), default=1))
            headers["Retry-After"] = str(retry_after)
            raise TooManyRequestsException(
                detail=(
                    f"Too many requests: the limit is {self.max_requests} per {self.unit}; "
                    f"retry in {retry_after} seconds"
                ),
                headers=headers,
            ) from None

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        try:
            return await super().retrieve_cached_history(key, store)
        except store_errors() as error:
            _log_store_error("read", error)
            return CacheObject(history=[], reset=int(time.time()) + DURATION_VALUES[self.unit])

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        try:
            await super().set_cached_history(key, cache_object, store)
        except store_errors() as error:
            _log_store_error("write", error)


def rate_limit_config(limit: RateLimit) -> RateLimitConfig:
    """The middleware configuration for ``limit``; add ``.middleware`` after the authentication middleware."""
    return RateLimitConfig(
        rate_limit=(limit.unit, limit.requests),
        identifier_for_request=user_key,
        check_throttle_handler=is_authenticated,
        exclude_opt_key=SKIP_RATE_LIMIT,
        middleware_class=UserRateLimitMiddleware,
        store=RATE_LIMIT_STORE,
    )


def _int(value: str | None, *, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _log_store_error(operation: str, error: Exception) -> None:
    logger.warning(
        "rate limit store %s failed; letting the request through: %s",
        operation,
        type(error).__name__,
        extra={"event": "rate_limit_store_failed", "operation": operation, "error": type(error).__name__},
    )
