"""Logs, metrics and traces of real turns through the HTTP app on PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from chatcore.adapters.observability.metrics import ChatMetrics
from chatcore.adapters.observability.otel import Tracing
from chatcore.entrypoints.logging import configure_logging
from chatcore.fakes import FunctionAgent, ScriptedAgent
from chatcore.model import AgentRequest, AgentResponse, ToolCall

from .conftest import SECRET, AppClient, auth, token_for
from .observed_app import engine_of, observed_app

pytestmark = pytest.mark.integration


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def add_milk_then_answer(title: str) -> ScriptedAgent:
    call = ToolCall(f"call_{uuid.uuid4().hex[:8]}", "add_task", {"title": title})
    return ScriptedAgent([AgentResponse("", (call,)), AgentResponse("Done: the task is on your list.")])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_a_turn_logs_one_json_line_with_its_ids_and_timings_and_no_text_or_secrets(
    app_client: AppClient, log_stream: io.StringIO
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    words = f"zebra-{uuid.uuid4().hex}"
    token = token_for(user, f"{user}@example.com")
    async with app_client(add_milk_then_answer(f"Feed the {words}")) as client:
        response = await client.post(
            f"/api/{user}/chat",
            json={"message": f"Please remember to feed the {words}"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text

    output = log_stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    (turn,) = [line for line in lines if line["event"] == "chat_turn"]
    assert turn["level"] == "info"
    assert turn["request_id"] == response.headers["x-request-id"]
    assert turn["conversation_id"] == response.json()["conversation_id"]
    assert turn["outcome"] == "ok"
    assert turn["tools"] == ["add_task"]
    assert turn["model_calls"] == 2
    assert turn["turn_ms"] >= turn["model_ms"] >= 0
    assert words not in output
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature
    assert SECRET not in output
    assert "Done: the task" not in output


async def test_a_failed_turn_logs_its_error_as_the_outcome(app_client: AppClient, log_stream: io.StringIO) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with app_client(ScriptedAgent([AgentResponse("unused")])) as client:
        unknown = {"message": "hello", "conversation_id": str(uuid.uuid4())}
        response = await client.post(f"/api/{user}/chat", json=unknown, headers=auth(user))
    assert response.status_code == 404

    (turn,) = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"chat_turn"' in line]
    assert (turn["outcome"], turn["request_id"]) == ("ConversationNotFound", response.headers["x-request-id"])


async def test_metrics_count_turns_by_outcome_model_calls_tools_pool_and_turns_in_flight(postgres_url: str) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    during_turn: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    metrics: list[ChatMetrics] = []

    def answer(request: AgentRequest) -> AgentResponse:
        # What a scrape would read while the turn runs and the model 'thinks'. (The test client runs the app in a
        # portal thread that cannot take a request from inside a request, so the registry is read directly.)
        during_turn.append(samples(metrics[0].exposition()[0].decode()))
        if not any(m.role == "tool" for m in request.messages):
            return AgentResponse("", (ToolCall("call_1", "add_task", {"title": "Buy milk"}),))
        return AgentResponse("Added.")

    async with observed_app(postgres_url, FunctionAgent(answer)) as (client, container):
        metrics.append(container.metrics())
        ok = await client.post(f"/api/{user}/chat", json={"message": "Add milk"}, headers=auth(user))
        assert ok.status_code == 200, ok.text
        denied = await client.post(f"/api/{user}/chat", json={"message": "x"}, headers={"Authorization": "Bearer x"})
        assert denied.status_code == 401
        empty = await client.post(f"/api/{user}/chat", json={"message": " "}, headers=auth(user))
        assert empty.status_code == 400
        scrape = await client.get("/metrics")  # no token needed
        schema = await client.get("/schema/openapi.json")

    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = samples(scrape.text)
    assert after[("chatcore_turn_seconds_count", (("outcome", "ok"),))] == 1
    assert after[("chatcore_turn_seconds_count", (("outcome", "Unauthenticated"),))] == 1
    assert after[("chatcore_turn_seconds_count", (("outcome", "InvalidMessage"),))] == 1
    assert after[("chatcore_model_call_seconds_count", (("outcome", "ok"), ("provider", "function")))] == 2
    assert after[("chatcore_tool_calls_total", (("tool", "add_task"),))] == 1
    assert after.get(("chatcore_tool_errors_total", (("tool", "add_task"),)), 0) == 0
    assert after[("chatcore_turns_in_flight", ())] == 0
    assert after[("chatcore_db_pool_in_use", ())] == 0
    assert len(during_turn) == 2
    for seen in during_turn:
        assert seen[("chatcore_turns_in_flight", ())] == 1
        assert seen[("chatcore_db_pool_in_use", ())] == 0  # no connection held while the model thinks
    assert "/metrics" not in schema.json()["paths"]


async def test_the_pool_gauge_reads_the_connections_checked_out(postgres_url: str) -> None:
    async with observed_app(postgres_url) as (_, container):
        metrics: ChatMetrics = container.metrics()
        engine = await engine_of(container)
        async with engine.connect():
            held = samples(metrics.exposition()[0].decode())[("chatcore_db_pool_in_use", ())]
        released = samples(metrics.exposition()[0].decode())[("chatcore_db_pool_in_use", ())]
    assert (held, released) == (1, 0)


async def test_each_app_counts_only_its_own_turns(app_client: AppClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with app_client(ScriptedAgent([AgentResponse("hi")])) as first:
        assert (await first.post(f"/api/{user}/chat", json={"message": "hi"}, headers=auth(user))).status_code == 200
        async with app_client(ScriptedAgent([AgentResponse("hi")])) as second:
            scrape = samples((await second.get("/metrics")).text)
    assert ("chatcore_turn_seconds_count", (("outcome", "ok"),)) not in scrape


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_one_turn_with_a_tool_call_is_one_trace_of_request_model_tool_and_sql_spans(postgres_url: str) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(SimpleSpanProcessor(exporter))
    user = f"user-{uuid.uuid4().hex[:8]}"
    caller_trace = uuid.uuid4().hex
    caller_span = uuid.uuid4().hex[:16]
    try:
        async with observed_app(postgres_url, add_milk_then_answer("Buy milk"), tracing=tracing) as (client, _):
            response = await client.post(
                f"/api/{user}/chat",
                json={"message": "Add a task to buy milk"},
                headers={**auth(user), "traceparent": f"00-{caller_trace}-{caller_span}-01"},
            )
        assert response.status_code == 200, response.text
    finally:
        tracing.shutdown()

    spans = exporter.get_finished_spans()
    (server,) = _by_name(spans, "POST /api/{user_id}/chat")
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == caller_span
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert {format(span.context.trace_id, "032x") for span in spans} == {caller_trace}

    models = _by_name(spans, "chat scripted")
    (tool,) = _by_name(spans, "execute_tool add_task")
    assert len(models) == 2
    for span in (*models, tool):
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id

    sql = [span for span in spans if span.kind is SpanKind.CLIENT and span.name not in {"chat scripted"}]
    assert sql, [span.name for span in spans]
    parents = {span.parent.span_id for span in sql if span.parent is not None}
    assert server.context.span_id in parents  # begin_turn / finish_turn
    assert tool.context.span_id in parents  # the task the tool inserted
    assert {(span.attributes or {}).get("db.system") for span in sql} == {"postgresql"}
    assert "Buy milk" not in repr([dict(span.attributes or {}) for span in spans])  # statements, never values


def test_without_an_otlp_endpoint_no_opentelemetry_sdk_is_loaded(tmp_path: Path) -> None:
    """Checked in a fresh interpreter: the test process itself has the SDK loaded by the tests above.

    Tracing modules only: the redis client imports OpenTelemetry's metrics SDK by itself when it is installed.
    """
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from litestar.testing import AsyncTestClient
        from chatcore.adapters.auth.hs256 import mint_hs256_token
        from chatcore.adapters.sqlalchemy.migrate import run_migrations_async
        from chatcore.entrypoints.container import build_container
        from chatcore.entrypoints.http.app import create_app
        from chatcore.entrypoints.settings import Settings

        TRACING_MODULES = (
            "chatcore.adapters.observability.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter",
            "opentelemetry.instrumentation.sqlalchemy",
        )

        async def main():
            url = "sqlite+aiosqlite:///{tmp_path / "free.db"}"
            await run_migrations_async(url)
            container = build_container(Settings(database_url=url, auth_secret={SECRET!r}))
            token = mint_hs256_token({SECRET!r}, user_id="u1", email=None, ttl_seconds=60)
            async with AsyncTestClient(app=create_app(container)) as client:
                response = await client.post(
                    "/api/u1/chat", json={{"message": "Add a task to buy milk"}},
                    headers={{"Authorization": "Bearer " + token}},
                )
                assert response.status_code == 200, response.text
                assert container.tracing() is None
            loaded = sorted(m for m in sys.modules if m.startswith(TRACING_MODULES))
            assert not loaded, loaded
            print("free")

        asyncio.run(main())
        """
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environment, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("free")
