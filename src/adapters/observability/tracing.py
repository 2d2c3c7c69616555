"""Tracing on or off, for the composition root. This module imports no OpenTelemetry code: ``otel`` does, lazily."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from chatcore.adapters.observability.otel import Tracing


def tracing_resource(endpoint: str | None) -> Iterator[Tracing | None]:
    """A container Resource: OTLP tracing when ``endpoint`` is set (flushed at stop), else None and nothing loaded.

    The ``otel`` extra is checked before, with the other extras the settings need (``entrypoints.extras``)."""
    if not endpoint:
        yield None
        return
    from chatcore.adapters.observability.otel import Tracing

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
