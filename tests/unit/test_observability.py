"""The measuring decorators of the agent and tool ports, and the metrics registry, with the in-memory fakes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from chatcore import ChatService
from chatcore.adapters.observability.instrumented import UNKNOWN_TOOL, InstrumentedAgent, InstrumentedToolRegistry
from chatcore.adapters.observability.metrics import ChatMetrics
from chatcore.adapters.observability.otel import Tracing
from chatcore.adapters.todo.model import TaskNotFound
from chatcore.errors import AgentTimeout
from chatcore.fakes import InMemoryConversationStore, InMemoryToolRegistry, ScriptedAgent, StaticTokenVerifier
from chatcore.model import AgentRequest, AgentResponse, JsonValue, Principal, TextDelta, ToolCall, ToolSpec
from tests.stores import claims_of

REQUEST = AgentRequest(system_prompt="be brief", messages=(), tools=())
ALICE = Principal("alice")


def sample(metrics: ChatMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def tools() -> InMemoryToolRegistry:
    registry = InMemoryToolRegistry()

    async def add(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        return {"task_id": 1, "title": arguments["title"]}

    async def refuse(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        raise TaskNotFound()

    registry.register(ToolSpec("add_task", "Add a task", {"type": "object"}), add)
    registry.register(ToolSpec("delete_task", "Delete a task", {"type": "object"}), refuse)
    return registry


async def test_model_calls_are_timed_by_provider_and_outcome() -> None:
    metrics = ChatMetrics()
    agent = InstrumentedAgent(ScriptedAgent([AgentResponse("hi"), AgentTimeout()]), metrics)
    assert agent.provider == "scripted"

    assert (await agent.complete(REQUEST)).text == "hi"
    with pytest.raises(AgentTimeout):
        await agent.complete(REQUEST)

    assert sample(metrics, "chatcore_model_call_seconds_count", provider="scripted", outcome="ok") == 1
    assert sample(metrics, "chatcore_model_call_seconds_count", provider="scripted", outcome="AgentTimeout") == 1


async def test_a_streamed_model_call_is_timed_once_it_ends_and_passes_every_event_through() -> None:
    metrics = ChatMetrics()
    agent = InstrumentedAgent(ScriptedAgent([AgentResponse("hello there")]), metrics)

    events = [event async for event in agent.stream(REQUEST)]

    assert isinstance(events[-1], AgentResponse)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there"
    assert sample(metrics, "chatcore_model_call_seconds_count", provider="scripted", outcome="ok") == 1


async def test_an_abandoned_stream_is_counted_as_cancelled() -> None:
    metrics = ChatMetrics()
    agent = InstrumentedAgent(ScriptedAgent([AgentResponse("one two three four")]), metrics)

    stream = agent.stream(REQUEST)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]

    assert sample(metrics, "chatcore_model_call_seconds_count", provider="scripted", outcome="cancelled") == 1


async def test_other_attributes_of_the_wrapped_agent_pass_through() -> None:
    inner = ScriptedAgent([AgentResponse("hi")])
    agent = InstrumentedAgent(inner, ChatMetrics())
    assert agent.requests is inner.requests
    with pytest.raises(AttributeError):
        _ = agent.no_such_thing


async def test_tool_calls_and_errors_are_counted_by_tool_and_unknown_names_share_one_label() -> None:
    metrics = ChatMetrics()
    registry = InstrumentedToolRegistry(tools(), metrics)
    assert [spec.name for spec in await registry.list_tools()] == ["add_task", "delete_task"]

    assert await registry.call(ALICE, "add_task", {"title": "Buy milk"}) == {"task_id": 1, "title": "Buy milk"}
    with pytest.raises(TaskNotFound):
        await registry.call(ALICE, "delete_task", {"task_id": 9})
    for invented in ("made_up_1", "made_up_2"):
        with pytest.raises(Exception, match="Unknown tool"):
            await registry.call(ALICE, invented, {})

    assert sample(metrics, "chatcore_tool_calls_total", tool="add_task") == 1
    assert sample(metrics, "chatcore_tool_errors_total", tool="add_task") == 0
    assert sample(metrics, "chatcore_tool_calls_total", tool="delete_task") == 1
    assert sample(metrics, "chatcore_tool_errors_total", tool="delete_task") == 1
    assert sample(metrics, "chatcore_tool_calls_total", tool=UNKNOWN_TOOL) == 2
    assert sample(metrics, "chatcore_tool_errors_total", tool=UNKNOWN_TOOL) == 2
    assert sample(metrics, "chatcore_tool_call_seconds_count", tool="add_task") == 1
    assert metrics.registry.get_sample_value("chatcore_tool_calls_total", {"tool": "made_up_1"}) is None


async def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = ChatMetrics(), ChatMetrics()
    first.turns_in_flight.inc()
    assert sample(first, "chatcore_turns_in_flight") == 1
    assert sample(second, "chatcore_turns_in_flight") == 0
    shared = CollectorRegistry()
    assert ChatMetrics(shared).registry is shared


async def test_the_exposition_is_prometheus_text_unless_openmetrics_is_asked_for() -> None:
    metrics = ChatMetrics()
    metrics.tool_calls.labels("add_task").inc()

    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b'chatcore_tool_calls_total{tool="add_task"} 1.0' in body
    assert b"# TYPE chatcore_turn_seconds histogram" in body
    assert b"chatcore_db_pool_in_use 0.0" in body

    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_a_whole_turn_through_the_decorators_leaves_model_and_tool_figures() -> None:
    metrics = ChatMetrics()
    verifier = StaticTokenVerifier()
    call = ToolCall("call_1", "add_task", {"title": "Buy milk"})
    conversations = InMemoryConversationStore()
    service = ChatService(
        store=conversations,
        claims=claims_of(conversations),
        agent=InstrumentedAgent(ScriptedAgent([AgentResponse("", (call,)), AgentResponse("Added.")]), metrics),
        verifier=verifier,
        tools=InstrumentedToolRegistry(tools(), metrics),
    )

    reply = await service.chat(verifier.issue("alice"), "alice", "Add a task to buy milk")

    assert reply.response == "Added."
    assert sample(metrics, "chatcore_model_call_seconds_count", provider="scripted", outcome="ok") == 2
    assert sample(metrics, "chatcore_tool_calls_total", tool="add_task") == 1


async def test_spans_for_model_and_tool_calls_nest_under_the_current_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(SimpleSpanProcessor(exporter))
    metrics = ChatMetrics()
    agent = InstrumentedAgent(ScriptedAgent([AgentResponse("hi", stop_reason="stop")]), metrics, tracing.tracer)
    registry = InstrumentedToolRegistry(tools(), metrics, tracing.tracer)
    await registry.list_tools()

    with tracing.tracer.start_as_current_span("turn"):
        await agent.complete(REQUEST)
        with pytest.raises(TaskNotFound):
            await registry.call(ALICE, "delete_task", {"task_id": 1})
        await registry.call(ALICE, "add_task", {"title": f"secret {uuid.uuid4()}"})
    tracing.shutdown()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"turn", "chat scripted", "execute_tool delete_task", "execute_tool add_task"}
    turn = spans["turn"]
    for name in ("chat scripted", "execute_tool delete_task", "execute_tool add_task"):
        assert spans[name].parent is not None
        assert spans[name].parent.span_id == turn.context.span_id
    model = spans["chat scripted"]
    assert model.attributes is not None
    assert model.attributes["gen_ai.provider.name"] == "scripted"
    assert model.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert not spans["execute_tool delete_task"].status.is_ok
    assert spans["execute_tool add_task"].status.is_ok
    for span in spans.values():  # no arguments or message text in span attributes
        assert "secret" not in repr(dict(span.attributes or {}))


def test_json_lines_write_values_and_keys_json_cannot_hold_as_their_repr() -> None:
    import json as json_module

    from chatcore.entrypoints.logging import _json_line

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    line = json_module.loads(_json_line({"event": "x", "thing": Opaque(), "when": 1.5}))
    assert line == {"event": "x", "thing": "<opaque>", "when": 1.5}
    odd_keys = json_module.loads(_json_line({"event": "x", "nested": {(1, 2): "tuple key", 3: "int key"}}))
    assert odd_keys == {"event": "x", "nested": {"(1, 2)": "tuple key", "3": "int key"}}
