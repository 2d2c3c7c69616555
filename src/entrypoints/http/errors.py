"""The one place domain errors become HTTP statuses, and the one handler that renders every error."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from chatcore.entrypoints.http.request_id import request_id_of
from chatcore.errors import (
    AgentError,
    AgentRateLimited,
    AgentTimeout,
    AgentUnavailable,
    AuthUnavailable,
    BudgetExhausted,
    ChatError,
    ContextTooLong,
    ConversationBusy,
    ConversationNotFound,
    DecisionConflict,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidMessage,
    InvalidRequest,
    StoreUnavailable,
    ToolCallNotFound,
    TurnAbandoned,
    TurnFailed,
    TurnNotFound,
    TurnStillOpen,
    Unauthenticated,
)
from chatcore.model import JsonValue

logger = logging.getLogger("chatcore.http")

STATUS: dict[type[ChatError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    ConversationNotFound: 404,
    TurnNotFound: 404,
    ToolCallNotFound: 404,
    InvalidMessage: 400,
    InvalidRequest: 400,
    ConversationBusy: 409,
    DecisionConflict: 409,
    TurnStillOpen: 409,
    TurnAbandoned: 503,
    IdempotencyInProgress: 409,
    IdempotencyKeyReused: 422,
    BudgetExhausted: 429,
    ContextTooLong: 422,
    AgentUnavailable: 502,
    AgentTimeout: 504,
    AgentRateLimited: 503,
    AgentError: 502,
    AuthUnavailable: 503,
    StoreUnavailable: 503,
}

INTERNAL_ERROR = "Internal server error"


def status_of(error: ChatError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def event_error_body(error: BaseException) -> dict[str, JsonValue]:
    """An ``error`` event's data: the status and detail ``chat_error_handler`` would answer with."""
    if not isinstance(error, ChatError):
        return {"status_code": 500, "detail": INTERNAL_ERROR}
    status = status_of(error)
    body: dict[str, JsonValue] = {"status_code": status, "detail": INTERNAL_ERROR if status == 500 else error.detail}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int):
        body["retry_after"] = retry_after
    return body


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status, headers=headers or {}, media_type=MediaType.JSON)


def chat_error_handler(request: Request[Any, Any, Any], error: ChatError) -> Response[Any]:
    status = status_of(error)
    body: dict[str, Any] = {"status_code": status, "detail": error.detail}
    headers: dict[str, str] = {}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = (
            'Bearer error="invalid_token"' if request.headers.get("authorization") else "Bearer"
        )
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int):
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, TurnFailed) and error.conversation_id is not None:
        body["conversation_id"] = str(error.conversation_id)
    if status >= 500:
        logger.warning(
            "request failed: %s",
            type(error).__name__,
            extra={"event": "request_failed", "status": status, "request_id": request_id_of(request.scope)},
        )
    if status == 500:
        body["detail"] = INTERNAL_ERROR
    return _error_response(status, body, headers)


def http_exception_handler(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    """Litestar's own errors (validation, 404 routes, 405, 413) keep their status with a clear detail."""
    status = error.status_code
    if status >= 500:
        return internal_error_handler(request, error)
    body: dict[str, Any] = {"status_code": status, "detail": error.detail}
    if isinstance(error, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        body["detail"] = f"Request body is too large: the limit is {limit} bytes" if limit else error.detail
    if error.extra:
        body["extra"] = error.extra
    return _error_response(status, body, dict(error.headers or {}))


def internal_error_handler(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Anything unexpected: logged with the request id, answered with nothing internal."""
    request_id = request_id_of(request.scope) or str(uuid.uuid4())
    logger.error(
        "unhandled error",
        exc_info=error,
        extra={"event": "unhandled_error", "request_id": request_id, "path": request.url.path},
    )
    return _error_response(500, {"status_code": 500, "detail": INTERNAL_ERROR})


EXCEPTION_HANDLERS = {
    ChatError: chat_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
