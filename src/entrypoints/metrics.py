"""HTTP side of the metrics: ``GET /metrics``, and a middleware that measures (and traces) every chat turn.

A turn's latency and outcome are measured at the edge, as the client sees them, so the domain keeps
no metrics code. The outcome is ``ok`` for a 2xx answer, else the name of the error that produced
the answer (``Unauthenticated``, ``AgentTimeout``, ``ValidationException``…), recorded in the ASGI
scope by the wrapped exception handlers (``record_outcomes``), else ``http_<status>``.

Each process has its own registry: with ``uvicorn --workers N`` a scrape sees one worker, so run
one worker per container (scaling by replicas) or scrape each worker's port.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from chatcore.adapters.observability.instrumented import outcome_of
from chatcore.adapters.observability.metrics import OK, ChatMetrics
from chatcore.errors import ChatError

if TYPE_CHECKING:
    from chatcore.adapters.observability.otel import Tracing

METRICS_PATH = "/metrics"
TURN_ROUTE = re.compile(r"^/api/\{user_id[^}]*\}/chat(/|$)")
"""Route templates of chat turns: the chat endpoint and whatever is mounted under it (a streamed turn)."""

_OUTCOME_KEY = "chatcore.outcome"
UNHANDLED = "UnhandledError"

ExceptionHandler = Callable[..., Response[Any]]


def metrics_route(metrics: ChatMetrics) -> HTTPRouteHandler:
    """``GET /metrics`` in Prometheus' text format: no auth (keep it off the public proxy), not in the schema."""

    @get(METRICS_PATH, include_in_schema=False, sync_to_thread=False)
    def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(content=body, headers={"Content-Type": content_type})  # as negotiated, charset included

    return prometheus_metrics


def record_outcomes(handlers: Mapping[Any, Any]) -> dict[Any, ExceptionHandler]:
    """The same exception handlers, each first noting the error's name in the scope for the turn's outcome label."""

    def recording(handler: ExceptionHandler) -> ExceptionHandler:
        def handle(request: Request[Any, Any, Any], error: Any) -> Response[Any]:
            request.scope[_OUTCOME_KEY] = (  # type: ignore[literal-required]  # our own scope key
                type(error).__name__ if isinstance(error, ChatError | HTTPException) else UNHANDLED
            )
            return handler(request, error)

        return handle

    return {kind: recording(handler) for kind, handler in handlers.items()}


def outcome_for(scope: Scope, status: int | None) -> str:
    if status is not None and 200 <= status < 400:
        return OK
    recorded = scope.get(_OUTCOME_KEY)
    if isinstance(recorded, str):
        return recorded
    return f"http_{status}" if status is not None else UNHANDLED


class ObservabilityMiddleware:
    """Chat turns: latency by outcome and turns in flight. Every request: a server span when tracing is on."""

    def __init__(self, app: ASGIApp, metrics: ChatMetrics, tracing: Callable[[], Tracing | None]) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        template = scope.get("path_template")
        is_turn = scope.get("method") == "POST" and isinstance(template, str) and TURN_ROUTE.match(template) is not None
        tracing = self.tracing() if template != METRICS_PATH else None
        if not is_turn and tracing is None:
            await self.app(scope, receive, send)
            return

        status: int | None = None

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        outcome: str | None = None
        started = time.perf_counter()
        if is_turn:
            self.metrics.turns_in_flight.inc()
        try:
            with tracing.server_span(scope) if tracing is not None else nullcontext() as span:
                try:
                    await self.app(scope, receive, send_noting_status)
                except BaseException as error:  # answered by the app's outer handler, after this middleware
                    outcome = outcome_of(error)
                    raise
                finally:
                    outcome = outcome or outcome_for(scope, status)
                    if tracing is not None and span is not None:
                        tracing.end_server_span(span, status, outcome)
        finally:
            if is_turn:
                self.metrics.turns_in_flight.dec()
                self.metrics.turn_seconds.labels(outcome or UNHANDLED).observe(time.perf_counter() - started)
