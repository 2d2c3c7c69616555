"""Tracing on or off, for the composition root. This module imports no OpenTelemetry code: ``otel`` does, lazily."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from chatcore.adapters.observability.otel import Tracing

MISSING_SDK = (
    "an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry SDK is not installed: "
    "pip install 'chatcore[otel]'"
)


def tracing_resource(endpoint: str | None) -> Iterator[Tracing | None]:
    """A container Resource: OTLP tracing when ``endpoint`` is set (flushed at stop), else None and nothing loaded."""
    if not endpoint:
        yield None
        return
    try:
        from chatcore.adapters.observability.otel import Tracing
    except ImportError as error:
        raise RuntimeError(MISSING_SDK) from error
    tracing = Tracing.otlp(endpoint)
    try:
        yield tracing
    finally:
        tracing.shutdown()


async def engine_tracing_resource(tracing: Tracing | None, engine: AsyncEngine) -> AsyncIterator[None]:
    """A container Resource: SQL statement spans on the app's engine when tracing is on."""
    if tracing is not None:
        tracing.trace_engine(engine)
    yield None


def tracer_of(tracing: Tracing | None) -> Tracer | None:
    return tracing.tracer if tracing is not None else None
