"""OpenTelemetry tracing of one app, exported over OTLP/HTTP.

Only ``tracing.tracing_resource`` imports this module, and only when an OTLP endpoint is configured:
without one, no OpenTelemetry SDK code is loaded and no span is ever made.
The tracer provider belongs to the app (it is not installed as the global provider), so apps in one
process do not share or fight over it; spans still nest through OpenTelemetry's context variables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from sqlalchemy.ext.asyncio import AsyncEngine

import chatcore

DEFAULT_SERVICE_NAME = "chatcore"


def service_resource() -> Resource:
    """The resource OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES describe, named ``chatcore`` when they do not."""
    resource = Resource.create({SERVICE_VERSION: chatcore.__version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


class Tracing:
    """A tracer provider with its span processor: spans for HTTP requests, model and tool calls, SQL statements."""

    def __init__(self, processor: SpanProcessor) -> None:
        self.provider = TracerProvider(resource=service_resource())
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("chatcore", chatcore.__version__)

    @classmethod
    def otlp(cls, endpoint: str) -> Tracing:
        """Batched export to ``endpoint`` (the full traces URL); headers, timeout and TLS come from OTEL_* variables."""
        return cls(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    def trace_engine(self, engine: AsyncEngine) -> None:
        """A client span per SQL statement, under whatever span is current (the request's, usually).

        ``EngineTracer`` is the instrumentation's per-engine part; its ``SQLAlchemyInstrumentor`` front
        patches SQLAlchemy process-wide, once, which would tie every engine to the first app's provider.
        """
        usage = NoOpMeter("chatcore").create_up_down_counter("db.client.connections.usage")
        EngineTracer(  # type: ignore[no-untyped-call]
            self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", chatcore.__version__),
            engine.sync_engine,
            usage,
        )

    @contextmanager
    def server_span(self, scope: Mapping[str, Any]) -> Iterator[Span]:
        """The current span of one HTTP request, continuing the caller's trace when it sent ``traceparent``.

        Named by the route template, never by the path: paths carry user ids.
        """
        method = str(scope.get("method", "GET"))
        route = scope.get("path_template")
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", ())}
        attributes = {"http.request.method": method, "url.scheme": str(scope.get("scheme", "http"))}
        if isinstance(route, str):
            attributes["http.route"] = route
        with self.tracer.start_as_current_span(
            f"{method} {route}" if isinstance(route, str) else method,
            context=extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            yield span

    @staticmethod
    def end_server_span(span: Span, status: int | None, outcome: str) -> None:
        span.set_attribute("chatcore.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, outcome))

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter's thread."""
        self.provider.shutdown()
