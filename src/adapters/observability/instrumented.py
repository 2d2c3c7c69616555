"""Decorators of the agent and tool ports that measure (Prometheus) and trace (OpenTelemetry) every call.

They wrap whatever adapter the container built, so the domain stays free of metrics code and every
provider and toolset is measured the same way. With no tracer they only time and count: no span work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chatcore.adapters.observability.metrics import OK, ChatMetrics
from chatcore.errors import BudgetExhausted
from chatcore.model import AgentRequest, AgentResponse, AgentStreamEvent, JsonValue, Principal, ToolSpec
from chatcore.ports import LLMAgent, ToolRegistry, UsageMeter, UsagePolicy
from chatcore.usage import UNMETERED, BudgetStatus, ModelCall

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

UNKNOWN_TOOL = "(unknown)"
"""The label of a tool name the registry does not list: a model may invent names, a label set must stay bounded."""
UNKNOWN_MODEL = "(unknown)"
"""The model label of a call whose model no one named (a test agent)."""


def outcome_of(error: BaseException) -> str:
    """A metric label for a failure: the error's class name, or ``cancelled`` for an abandoned call."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return type(error).__name__


class InstrumentedAgent:
    """An LLMAgent that times every model call by provider and outcome, and traces it when a tracer is given."""

    def __init__(self, agent: LLMAgent, metrics: ChatMetrics, tracer: Tracer | None = None) -> None:
        self.inner = agent
        self.provider = agent.provider
        self._metrics = metrics
        self._tracer = tracer
        model = getattr(agent, "model", None)
        self._model = model if isinstance(model, str) else None

    async def complete(self, request: AgentRequest) -> AgentResponse:
        started = time.perf_counter()
        outcome = OK
        with self._current_span() as span:
            try:
                response = await self.inner.complete(request)
            except BaseException as error:
                outcome = outcome_of(error)
                raise
            finally:
                self._observe(started, outcome)
            if span is not None:
                _describe_response(span, response)
            return response

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """The inner agent's stream, timed from the request to its last event (or to abandonment)."""
        started = time.perf_counter()
        outcome = OK
        # Not the current span: a generator is resumed in its consumer's context, which must not be left changed.
        span = self._tracer.start_span(**self._span_arguments()) if self._tracer is not None else None
        try:
            async for event in self.inner.stream(request):
                if span is not None and isinstance(event, AgentResponse):
                    _describe_response(span, event)
                yield event
        except BaseException as error:
            outcome = outcome_of(error)
            if span is not None:
                _record_error(span, error)
            raise
        finally:
            self._observe(started, outcome)
            if span is not None:
                span.end()

    def __getattr__(self, name: str) -> Any:
        """Anything else of the inner agent (``aclose``, a capability added later) passes through unmeasured."""
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _observe(self, started: float, outcome: str) -> None:
        self._metrics.model_call_seconds.labels(self.provider, outcome).observe(time.perf_counter() - started)

    def _span_arguments(self) -> dict[str, Any]:
        from opentelemetry.trace import SpanKind

        attributes: dict[str, str] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider}
        if self._model:
            attributes["gen_ai.request.model"] = self._model
        return {"name": f"chat {self._model or self.provider}", "kind": SpanKind.CLIENT, "attributes": attributes}

    @contextmanager
    def _current_span(self) -> Iterator[Span | None]:
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(**self._span_arguments()) as span:
            yield span


class InstrumentedToolRegistry:
    """A ToolRegistry that counts calls and errors by tool, times them, and traces them when a tracer is given."""

    def __init__(self, registry: ToolRegistry, metrics: ChatMetrics, tracer: Tracer | None = None) -> None:
        self.inner = registry
        self._metrics = metrics
        self._tracer = tracer
        self._known: frozenset[str] = frozenset()

    async def list_tools(self) -> Sequence[ToolSpec]:
        specs = await self.inner.list_tools()
        self._known = frozenset(spec.name for spec in specs)
        return specs

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        tool = name if name in self._known else UNKNOWN_TOOL
        self._metrics.tool_calls.labels(tool).inc()
        started = time.perf_counter()
        span_context = (
            self._tracer.start_as_current_span(
                f"execute_tool {tool}",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool},
            )
            if self._tracer is not None
            else nullcontext()
        )
        with span_context:
            try:
                return await self.inner.call(principal, name, arguments)
            except BaseException:
                self._metrics.tool_errors.labels(tool).inc()
                raise
            finally:
                self._metrics.tool_call_seconds.labels(tool).observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        """Anything else of the inner registry (``aclose``, a capability added later) passes through unmeasured."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class InstrumentedUsagePolicy:
    """A UsagePolicy that counts the tokens of every call (by provider, model and kind) and every budget refusal."""

    def __init__(self, policy: UsagePolicy, metrics: ChatMetrics) -> None:
        self.inner = policy
        self._metrics = metrics

    async def begin(self, user_id: str, now: datetime) -> UsageMeter:
        try:
            return _InstrumentedMeter(await self.inner.begin(user_id, now), self._metrics)
        except BudgetExhausted:
            self._metrics.budget_refusals.inc()
            raise

    async def status(self, user_id: str, now: datetime) -> BudgetStatus | None:
        return await self.inner.status(user_id, now)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _InstrumentedMeter:
    def __init__(self, meter: UsageMeter, metrics: ChatMetrics) -> None:
        self._meter = meter
        self._metrics = metrics

    async def admit(self, now: datetime) -> None:
        if self._meter is UNMETERED:  # no budget: nothing to ask, on every model call
            return
        try:
            await self._meter.admit(now)
        except BudgetExhausted:
            self._metrics.budget_refusals.inc()
            raise

    def record(self, call: ModelCall) -> None:
        usage = call.usage
        input_tokens, output_tokens, cached_read, cache_write = self._metrics.token_counters(
            call.provider, call.model or UNKNOWN_MODEL
        )
        input_tokens.inc(usage.input_tokens)
        output_tokens.inc(usage.output_tokens)
        cached_read.inc(usage.cached_read_tokens)
        cache_write.inc(usage.cache_write_tokens)
        self._meter.record(call)

    def close(self) -> None:
        self._meter.close()


def _describe_response(span: Span, response: AgentResponse) -> None:
    if response.stop_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [response.stop_reason])
    span.set_attribute("chatcore.tool_calls", len(response.tool_calls))


def _record_error(span: Span, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(error, Exception):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
