"""The harness's arithmetic and bookkeeping: percentiles, ratios and targets, /proc readings, seeding, profiles."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import procstat
from bench.database import seeded_messages
from bench.floor import model_messages
from bench.load import (
    AgUiTurns,
    AiSdkTurns,
    ApprovalTurns,
    JsonTurns,
    LoadResult,
    StreamedTurns,
    VirtualUser,
    percentile,
    run_load,
    user_turns,
)
from bench.measure import reply_check
from bench.profile import package_of, parse_raw, summarise
from bench.report import CHATCORE, FLOOR, KEPT_HEADINGS, Measurement, Report, kept_by_hand


def measurement(scenario: str, server: str, **figures: Any) -> Measurement:
    values: dict[str, Any] = {
        "users": 1,
        "ok": 10,
        "turns_per_second": 100.0,
        "p50_ms": 10.0,
        "p95_ms": 20.0,
        "p99_ms": 30.0,
        "server_cpu_ms_per_turn": 2.0,
        "db_cpu_ms_per_turn": 1.0,
        "peak_rss_mb": 60.0,
        **figures,
    }
    return Measurement(
        scenario=scenario,
        server=server,
        turns_per_user=1,
        failures={},
        timed_out=False,
        wall_seconds=1.0,
        model_calls_per_turn=1.0,
        **values,
    )


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(101))), 95) == 95.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_load_result_rates() -> None:
    result = LoadResult(latencies=[0.01, 0.02, 0.03, 0.04], wall_seconds=2.0)
    assert result.turns_per_second == 2.0
    assert result.percentile_ms(50) == pytest.approx(25.0)
    assert LoadResult().turns_per_second == 0.0


def test_targets_compare_chatcore_to_the_floor() -> None:
    report = Report(command="x", machine={}, runtime_seconds=120.0)
    report.measurements = [
        measurement("overhead", FLOOR, server_cpu_ms_per_turn=2.0, turns_per_second=200.0),
        measurement("overhead", CHATCORE, server_cpu_ms_per_turn=2.8, turns_per_second=120.0),
        measurement("slow-model", FLOOR, p95_ms=600.0),
        measurement("slow-model", CHATCORE, p95_ms=780.0, peak_rss_mb=140.0),
        measurement("history-fresh", CHATCORE, p95_ms=100.0),
        measurement("history-800", CHATCORE, p95_ms=110.0),
    ]
    targets = report.targets(600.0)
    assert [(round(t.measured, 3), t.met) for t in targets] == [
        (1.4, True),  # CPU per turn 2.8 / 2.0
        (0.6, False),  # turns/s 120 / 200
        (1.3, False),  # slow p95 780 / 600
        (1.1, True),  # history p95 110 / 100
        (140.0, True),  # RSS
        (120.0, True),  # runtime
    ]
    text = report.render(600.0)
    assert "| overhead: turns/s, chatcore ÷ floor | 0.60× | ≥ 0.70× | **NOT met** |" in text
    assert "| overhead | 0.60× |" in text


def test_a_missing_figure_is_never_met() -> None:
    report = Report(command="x", machine={}, measurements=[measurement("overhead", FLOOR)])
    assert not any(t.met for t in report.targets(600.0)[:5])
    assert "n/a" in report.render(600.0)


def test_disturbed_measurements_are_flagged() -> None:
    report = Report(command="x", machine={})
    report.measurements = [measurement("overhead", FLOOR, background_cpu_percent=40.0)]
    assert "**Disturbed:**" in report.render(600.0)


def test_proc_readings_of_this_process() -> None:
    assert procstat.cpu_seconds(os.getpid()) > 0
    rss = procstat.rss_bytes(os.getpid())  # read first: the peak, read after, is at least this
    assert procstat.peak_rss_bytes(os.getpid()) >= rss > 0
    assert procstat.machine_busy_seconds() > 0
    assert procstat.cpu_seconds(2**22 + 12345) == 0.0  # above pid_max: no such process


async def test_descendants_include_a_child_process() -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    try:
        assert child.pid in procstat.descendants(os.getpid())
        assert os.getpid() in procstat.descendants(os.getpid())
    finally:
        child.kill()
        await child.wait()


def test_seeded_conversations_pair_every_call_with_its_result() -> None:
    import uuid
    from datetime import UTC, datetime

    rows = seeded_messages(uuid.uuid4(), 800, datetime.now(UTC))
    assert [row[2] for row in rows] == list(range(1, 801))
    assert [row[3] for row in rows[:4]] == ["user", "assistant", "tool", "assistant"]
    assert rows[-1][3] == "assistant"
    assert [row[10] for row in rows] == sorted(row[10] for row in rows)
    for call_row, result_row in zip(rows[1::4], rows[2::4], strict=True):
        [call] = json.loads(call_row[5])
        assert call["name"] == "add_task"
        assert result_row[6] == call["id"]


def test_floor_maps_history_and_drops_a_leading_tool_result() -> None:
    call = {"id": "call_1", "name": "add_task", "arguments": {"title": "Milk"}}
    rows = [
        {"role": "tool", "content": "{}", "tool_calls": None, "tool_call_id": "call_0"},
        {"role": "user", "content": "Add milk", "tool_calls": None, "tool_call_id": None},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([call]), "tool_call_id": None},
        {"role": "tool", "content": '{"task_id": 1}', "tool_call_id": "call_1", "tool_calls": None},
        {"role": "assistant", "content": "Added.", "tool_calls": None, "tool_call_id": None},
    ]
    messages = model_messages(rows)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["content"] is None
    assert messages[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "add_task", "arguments": '{"title":"Milk"}'}}
    ]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"task_id": 1}'}
    assert model_messages([{"role": None, "content": None, "tool_calls": None, "tool_call_id": None}]) == []


def test_reply_check_counts_tool_calls() -> None:
    ok = {"conversation_id": "c", "message_id": "m", "response": "hi", "tool_calls": []}
    assert reply_check(0)(ok) is None
    assert reply_check(1)(ok) == "reply with 0 tool calls"
    assert reply_check(1)({**ok, "tool_calls": [{"id": "x", "error": "boom"}]}) == "tool call failed"
    assert reply_check(0)({**ok, "response": ""}) == "incomplete reply"


async def test_users_run_their_turns_in_order_and_keep_their_conversation() -> None:
    seen: list[tuple[str, Any]] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        seen.append((scope["path"], body.get("conversation_id")))
        status = 500 if body["message"].endswith("fail") else 200
        payload = {"conversation_id": f"conv-{scope['path']}", "message_id": "m", "response": "ok", "tool_calls": []}
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    users = [VirtualUser("a", "t"), VirtualUser("b", "t", conversation_id="seeded")]
    result = await run_load(
        "http://bench",
        users,
        3,
        deadline_seconds=30,
        check=reply_check(0),
        message=lambda user, turn: "fail" if (user.user_id, turn) == ("a", 1) else f"turn {turn}",
        client_factory=lambda: JsonTurns(httpx.AsyncClient(transport=httpx.ASGITransport(app=app))),
    )
    assert result.turns == 5
    assert dict(result.failures) == {"HTTP 500": 1}
    assert not result.timed_out
    assert [c for p, c in seen if p == "/api/a/chat"] == [None, "conv-/api/a/chat", "conv-/api/a/chat"]
    assert [c for p, c in seen if p == "/api/b/chat"] == ["seeded", "conv-/api/b/chat", "conv-/api/b/chat"]


async def test_streamed_turns_time_the_first_delta_and_the_done_event() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert request.headers["accept"] == "text/event-stream"
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if body["message"] == "refuse":
            await response.write(b'event: error\r\ndata: {"status_code":502,"detail":"x"}\r\n\r\n')
            return response
        if body["message"] == "cut":
            await response.write(b'event: delta\r\ndata: {"text":"Hel"}\r\n\r\n')
            return response
        await response.write(b'id: 1\r\nevent: turn\r\ndata: {"turn_id":"t"}\r\n\r\n')
        await asyncio.sleep(0.05)
        for piece in ("Hel", "lo"):
            await response.write(b"event: delta\r\ndata: " + json.dumps({"text": piece}).encode() + b"\r\n\r\n")
            await asyncio.sleep(0.05)
        done = {"conversation_id": "c1", "message_id": "m", "response": "Hello", "tool_calls": [], "interrupted": False}
        await response.write(b"event: done\r\ndata: " + json.dumps(done).encode() + b"\r\n\r\n")
        return response

    app = web.Application()
    app.router.add_post("/api/{user}/chat", stream)
    async with TestServer(app) as server:
        result = await run_load(
            str(server.make_url("")).rstrip("/"),
            [VirtualUser("a", "t")],
            4,
            deadline_seconds=30,
            check=reply_check(0),
            message=lambda user, turn: ("ok", "refuse", "cut", "ok")[turn],
            client_factory=lambda: user_turns("sse"),
        )
    assert dict(result.failures) == {"error event 502": 1, "stream ended before its last event": 1}
    assert result.turns == 2
    for first, whole in zip(result.first_text, result.latencies, strict=True):
        assert 0 < first < whole  # the first delta comes a sleep before the done event


AI_SDK_TURN = [
    {"type": "start", "messageId": "m1", "messageMetadata": {"conversationId": "c1", "turnId": "t1"}},
    {"type": "start-step"},
    {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "add_task"},
    {"type": "tool-input-available", "toolCallId": "call_1", "toolName": "add_task", "input": {"title": "tea"}},
    {"type": "tool-output-available", "toolCallId": "call_1", "output": {"task_id": 7}},
    {"type": "finish-step"},
    {"type": "start-step"},
    {"type": "text-start", "id": "text-5"},
    {"type": "text-delta", "id": "text-5", "delta": "Added "},
    {"type": "text-delta", "id": "text-5", "delta": "tea."},
    {"type": "text-end", "id": "text-5"},
    {"type": "finish-step"},
    {"type": "finish", "finishReason": "stop"},
]
AG_UI_TURN = [
    {"type": "RUN_STARTED", "threadId": "th", "runId": "r"},
    {"type": "TOOL_CALL_START", "toolCallId": "call_1", "toolCallName": "add_task", "parentMessageId": "t:1"},
    {"type": "TOOL_CALL_ARGS", "toolCallId": "call_1", "delta": '{"title": "tea"}'},
    {"type": "TOOL_CALL_END", "toolCallId": "call_1"},
    {"type": "TOOL_CALL_RESULT", "messageId": "call_1:result", "toolCallId": "call_1", "content": '{"task_id": 7}'},
    {"type": "TEXT_MESSAGE_START", "messageId": "t:2", "role": "assistant"},
    {"type": "TEXT_MESSAGE_CONTENT", "messageId": "t:2", "delta": "Added "},
    {"type": "TEXT_MESSAGE_CONTENT", "messageId": "t:2", "delta": "tea."},
    {"type": "TEXT_MESSAGE_END", "messageId": "t:2"},
    {
        "type": "RUN_FINISHED",
        "threadId": "th",
        "runId": "r",
        "result": {"conversationId": "c1", "messageId": "m1", "response": "Added tea."},
        "outcome": {"type": "success"},
    },
]


@pytest.mark.parametrize(
    ("protocol", "path", "chunks", "tail"),
    [
        ("ai-sdk", "/api/ann/ai-sdk/chat", AI_SDK_TURN, b"data: [DONE]\n\n"),
        ("ag-ui", "/api/ann/ag-ui", AG_UI_TURN, b""),
    ],
)
async def test_the_frontends_streams_are_read_into_the_chat_replys_shape(
    protocol: Any, path: str, chunks: list[dict[str, Any]], tail: bytes
) -> None:
    bodies: list[dict[str, Any]] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(0.01)
        await response.write(tail)
        return response

    app = web.Application()
    app.router.add_post(path, stream)
    async with TestServer(app) as server:
        client = user_turns(protocol)
        try:
            answer = await client.ask(str(server.make_url("/api/ann/chat")), {}, {"message": "Add tea"})
            again = await client.ask(
                str(server.make_url("/api/ann/chat")), {}, {"message": "More", "conversation_id": "c1"}
            )
        finally:
            await client.aclose()
    assert not isinstance(answer, str)
    assert not isinstance(again, str)
    assert answer.reply == {
        "conversation_id": "c1",
        "message_id": "m1",
        "response": "Added tea.",
        "tool_calls": [{"id": "call_1", "name": "add_task", "arguments": {"title": "tea"}, "result": {"task_id": 7}}],
        "interrupted": False,
    }
    assert reply_check(1)(answer.reply) is None
    assert 0 < answer.first_text < answer.seconds
    first, second = bodies
    if protocol == "ai-sdk":
        assert first["trigger"] == "submit-message"
        assert first["messages"][-1]["role"] == "user"
        assert first["messages"][-1]["parts"] == [{"type": "text", "text": "Add tea"}]
        assert (second["id"], first["id"] != "c1") == ("c1", True)  # a new chat, then the conversation it became
    else:
        assert first["messages"] == [{"id": first["messages"][0]["id"], "role": "user", "content": "Add tea"}]
        assert {"tools", "context", "state", "forwardedProps", "runId"} <= set(first)
        assert (second["threadId"], first["threadId"] != "c1") == ("c1", True)


async def test_an_approval_round_trip_approves_every_pending_call_then_reads_the_turns_reply() -> None:
    seen: list[tuple[str, Any]] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        seen.append((scope["path"], body))
        reply: dict[str, Any] = {"conversation_id": "c1", "message_id": "m", "tool_calls": []}
        if scope["path"].endswith("/chat") and body["message"] == "no tool":
            reply |= {"response": "Hi", "status": "complete", "pending_approvals": []}
        elif scope["path"].endswith("/chat"):
            pending = [{"id": "call_1", "name": "add_task", "arguments": {"title": "tea"}}, {"id": "call_2"}]
            reply |= {"response": "", "status": "awaiting_approval", "pending_approvals": pending}
        else:
            reply |= {"response": "Added.", "status": "complete", "pending_approvals": []}
            reply["tool_calls"] = [{"id": "call_1", "name": "add_task", "result": {"task_id": 1}}]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(reply).encode()})

    result = await run_load(
        "http://bench",
        [VirtualUser("ann", "t")],
        2,
        deadline_seconds=30,
        check=reply_check(1),
        message=lambda user, turn: ("buy tea", "no tool")[turn],
        client_factory=lambda: ApprovalTurns(httpx.AsyncClient(transport=httpx.ASGITransport(app=app))),
    )
    assert result.turns == 1
    assert dict(result.failures) == {"no approval asked for (status complete)": 1}
    assert seen[:2] == [
        ("/api/ann/chat", {"message": "buy tea"}),
        (
            "/api/ann/conversations/c1/approvals",
            {"decisions": [{"tool_call_id": "call_1", "approved": True}, {"tool_call_id": "call_2", "approved": True}]},
        ),
    ]
    assert 0 < result.first_text[0] < result.latencies[0]


async def test_user_turns_match_their_protocol() -> None:
    clients = [user_turns(protocol) for protocol in ("json", "sse", "approval", "ai-sdk", "ag-ui")]
    assert [type(client) for client in clients] == [JsonTurns, StreamedTurns, ApprovalTurns, AiSdkTurns, AgUiTurns]
    for client in clients:
        await client.aclose()


async def test_a_run_stops_at_its_deadline() -> None:
    async def stuck(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    result = await run_load(
        "http://bench",
        [VirtualUser("a", "t")],
        2,
        deadline_seconds=0.05,
        client_factory=lambda: JsonTurns(httpx.AsyncClient(transport=httpx.ASGITransport(app=stuck))),
    )
    assert result.timed_out
    assert result.turns == 0


def test_profile_summary_attributes_samples_to_packages() -> None:
    raw = [
        'process 1:"python";serve (chatcore/cli.py:1);_run_turn (chatcore/service.py:2);create (openai/x.py:3) 6',
        'process 1:"python";serve (chatcore/cli.py:1);_run_turn (chatcore/service.py:2);execute (sqlalchemy/e.py:4) 2',
        'process 1:"python";serve (chatcore/cli.py:1);parse (h11/p.py:5) 1',
        'process 1:"python" 1',
        "garbage line",
    ]
    stacks = parse_raw(raw)
    assert len(stacks) == 4
    assert package_of("f (json/encoder.py:201)") == "json"
    assert package_of("f (typing.py:9)") == "typing"
    summary = summarise(stacks, anchor="_run_turn")
    assert "Inside `_run_turn`: 80.0%" in summary
    assert "| openai | 60.0% |" in summary
    assert "| sqlalchemy | 20.0% |" in summary
    assert "| no Python frame (native code, GC) | 10.0% |" in summary
    below_anchor = summary.split("with its callees")[1].split("own time only")[0]
    assert "| `create (openai/x.py)` | 60.0% |" in below_anchor
    assert "serve" not in below_anchor
    assert "parse (h11/p.py)" not in below_anchor

    everywhere = summarise(stacks, anchor=None)  # a streamed turn: every function but the roots of every stack
    with_callees = everywhere.split("with its callees")[1].split("own time only")[0]
    assert "| `create (openai/x.py)` | 60.0% |" in with_callees
    assert "| `parse (h11/p.py)` | 10.0% |" in with_callees
    assert "serve (chatcore/cli.py)" not in with_callees  # where every full stack starts


def test_a_scenario_far_below_what_its_users_could_ask_for_is_called_cpu_bound() -> None:
    from bench.measure import saturation_notes
    from bench.scenarios import ModelSetup, Scenario

    slow = Scenario("slow-model", "500 ms model", 200, 3, ModelSetup(500))
    instant = Scenario("overhead", "instant", 32, 15)
    notes = saturation_notes(
        [slow, instant],
        [
            measurement("slow-model", CHATCORE, turns_per_second=80.0),
            measurement("slow-model", FLOOR, turns_per_second=390.0),
            measurement("overhead", FLOOR, turns_per_second=1.0),
        ],
    )
    assert len(notes) == 1
    assert notes[0].startswith(
        "slow-model on chatcore was CPU-bound: 200 users behind a 500 ms model could make up to 400"
    )


def test_pools_shrink_only_when_both_servers_would_not_fit() -> None:
    from bench.servers import pool_budget

    assert pool_budget(100, servers=2, workers=1) is None
    assert pool_budget(100, servers=2, workers=2) == (22, 0)  # 90 connections // 4 workers = 22 each
    assert sum(pool_budget(100, servers=2, workers=4) or ()) * 2 * 4 <= 90
    with pytest.raises(SystemExit):
        pool_budget(20, servers=2, workers=8)


def test_the_hand_written_sections_survive_a_rerun() -> None:
    streamed, tuning = KEPT_HEADINGS
    log = f"{tuning}\n\nBefore: 12 ms a turn.\n\n### Profile before\n\n| a | b |\n"
    previous = f"# Performance\n\nold figures\n\n{log}"

    kept = kept_by_hand(previous)

    assert kept == f"\n{log}"
    assert "old figures" not in kept
    assert kept_by_hand("# Performance\n\nno log yet\n") == ""
    both = f"# Performance\n\nold\n\n{streamed}\n\n| before | after |\n\n{log}"
    assert kept_by_hand(both) == f"\n{streamed}\n\n| before | after |\n\n{log}"


def test_chatcore_settings_for_a_comparison_run_parse_as_name_and_value() -> None:
    import argparse

    from bench.run import _setting

    assert _setting("CHATCORE_LLM_HTTP=httpx") == ("CHATCORE_LLM_HTTP", "httpx")
    assert _setting("CHATCORE_SYSTEM_PROMPT=a=b") == ("CHATCORE_SYSTEM_PROMPT", "a=b")
    for bad in ("CHATCORE_LLM_HTTP", "=httpx"):
        with pytest.raises(argparse.ArgumentTypeError):
            _setting(bad)


def test_streaming_targets_compare_sse_with_json_and_with_the_floor() -> None:
    streamed: dict[str, Any] = {"protocol": "sse", "chunks": 100, "model_ms": 2000.0}
    report = Report(command="x", machine={}, runtime_seconds=300.0)
    report.measurements = [
        measurement("streaming-json", CHATCORE, server_cpu_ms_per_turn=2.0, transactions_per_turn=2.0, chunks=100),
        measurement(
            "streaming-sse",
            CHATCORE,
            server_cpu_ms_per_turn=5.0,
            first_text_p95_ms=250.0,
            p95_ms=2500.0,
            transactions_per_turn=5.0,
            baseline="streaming-json",
            **streamed,
        ),
        measurement("streaming-sse", FLOOR, server_cpu_ms_per_turn=4.0, **streamed),
        measurement("streaming-long-sse", CHATCORE, transactions_per_turn=6.5, baseline="streaming-json", **streamed),
        measurement("open-streams", CHATCORE, users=1000, ok=998, peak_rss_mb=200.0, **streamed),
        measurement("overhead-rate-limit", CHATCORE, server_cpu_ms_per_turn=2.6, baseline="overhead"),
        measurement("overhead-rate-limit", FLOOR, server_cpu_ms_per_turn=2.0),
    ]
    targets = {t.name: (round(t.measured, 3), t.limit, t.met) for t in report.targets(600.0)}
    assert targets == {
        "streaming: server CPU per turn, chatcore SSE ÷ chatcore JSON": (2.5, 2.0, False),
        "streaming: server CPU per SSE turn, chatcore ÷ floor": (1.25, 1.5, True),
        "streaming: chatcore first text p95": (250.0, 300, True),
        "streaming: chatcore whole turn p95 (1.2 × the model's own streaming time)": (2500.0, 2400.0, False),
        "streaming: PostgreSQL transactions per chatcore SSE turn": (5.0, 6, True),
        "streaming: transactions per chatcore SSE turn, 400 chunks − 100 chunks (either way)": (1.5, 1, False),
        "open streams: chatcore turns that failed or never finished": (2, 0, False),
        "open streams: chatcore peak RSS per worker": (200.0, 256, True),
        "overhead with a rate limit and INFO logging: server CPU per turn, chatcore ÷ floor": (1.3, 1.5, True),
        "`make bench` runtime": (300.0, 600.0, True),
    }
    text = report.render(600.0)
    assert "| open streams: chatcore turns that failed or never finished | 2 | ≤ 0 | **NOT met** |" in text
    assert "| streaming-sse | chatcore | SSE | 1 × 1 | 10 | 100.0 | n/a / 250 | 10 / 2500 | 5.00 | 5.0 |" in text
    assert "| streaming-json | chatcore | JSON |" in text  # the JSON turn of a streaming model is listed with them
    assert "| overhead-rate-limit | overhead | n/a× | 1.30× |" in text  # no plain overhead run: no ratio to it
    assert "| streaming-sse | streaming-json | 2.50× | 1.25× | 5.0 (2.0) | n/a (n/a) |" in text


def test_targets_are_listed_only_for_scenarios_that_ran() -> None:
    report = Report(command="x", machine={}, measurements=[measurement("streaming-json", CHATCORE)])
    assert [t.name for t in report.targets(600.0)] == [
        "streaming: server CPU per turn, chatcore SSE ÷ chatcore JSON",
        "`make bench` runtime",
    ]
    assert "## Streamed turns" not in report.render(600.0)  # one reply, from a model that does not stream
    assert "## Paths a request can take" not in report.render(600.0)


def test_scenarios_are_picked_by_name_or_pattern_in_the_tables_order() -> None:
    from bench.run import parse_args
    from bench.scenarios import scenario_table, select

    table = scenario_table(parse_args([]))
    names = [s.name for s in table]
    assert len(names) == len(set(names))
    assert [s.name for s in select(table, "streaming*, open-streams")] == [
        "open-streams",
        "streaming-json",
        "streaming-sse",
        "streaming-long-sse",
    ]
    assert [s.name for s in select(table, "*")] == names
    with pytest.raises(SystemExit, match="no scenario matches nope"):
        select(table, "overhead,nope")


def test_every_path_is_compared_with_a_json_turn_of_the_same_load_and_model_time() -> None:
    from bench.run import parse_args
    from bench.scenarios import scenario_table

    table = {s.name: s for s in scenario_table(parse_args([]))}
    paths = [s for s in table.values() if s.baseline is not None]
    assert {s.name for s in paths} == {
        "overhead-rate-limit",
        "overhead-budget",
        "approval-round-trip",
        "busy-reject",
        "streaming-sse",
        "retried-sse",
        "streaming-long-sse",
        "ai-sdk-stream",
        "ag-ui-stream",
    }
    for path in paths:
        plain = table[path.baseline or ""]
        assert plain.protocol == "json"
        assert not plain.chatcore_settings
        assert (plain.users, plain.turns, plain.model.latency_ms, plain.model.reply_chars, plain.model.mode) == (
            path.users,
            path.turns,
            path.model.latency_ms,
            path.model.reply_chars,
            path.model.mode,
        )


def test_the_floor_streams_its_own_sse_where_it_does_not_speak_a_frontends_protocol() -> None:
    from bench.run import parse_args
    from bench.scenarios import scenario_table

    table = {s.name: s for s in scenario_table(parse_args([]))}
    assert [table["ai-sdk-stream"].protocol_for(t) for t in (FLOOR, CHATCORE)] == ["sse", "ai-sdk"]
    assert [table["ag-ui-stream"].protocol_for(t) for t in (FLOOR, CHATCORE)] == ["sse", "ag-ui"]
    assert [table["streaming-sse"].protocol_for(t) for t in (FLOOR, CHATCORE)] == ["sse", "sse"]


def test_server_specs_name_their_settings_and_counting() -> None:
    from bench.scenarios import ServerSpec

    plain, counted = ServerSpec(CHATCORE), ServerSpec(FLOOR, counted=True)
    limited = ServerSpec(CHATCORE, (("CHATCORE_RATE_LIMIT", "1000000/minute"),))
    assert (plain.name, counted.name) == ("chatcore", "floor (counted)")
    assert limited.name == "chatcore[CHATCORE_RATE_LIMIT=1000000/minute]"
    assert limited.slug == "chatcore_CHATCORE_RATE_LIMIT_1000000_minute"
    assert len({plain, counted, limited, ServerSpec(CHATCORE)}) == 3


async def test_the_fleet_runs_each_server_from_its_first_scenario_to_its_last(tmp_path: Any) -> None:
    from bench.scenarios import ServerSpec
    from bench.servers import Fleet, Server

    events: list[str] = []

    class Recorded(Server):
        async def start(self, client: httpx.AsyncClient) -> None:
            events.append(f"start {self.name}")

        async def stop(self) -> None:
            events.append(f"stop {self.name}")

        def worker_pids(self) -> list[int]:
            return [os.getpid()]

    async def warm_up(server: Server) -> None:
        events.append(f"warm {server.name}")

    floor, chatcore = ServerSpec(FLOOR), ServerSpec(CHATCORE)
    limited = ServerSpec(CHATCORE, (("CHATCORE_RATE_LIMIT", "9/minute"),))
    floor_counted, chatcore_counted = ServerSpec(FLOOR, counted=True), ServerSpec(CHATCORE, counted=True)
    plan = [[floor, chatcore], [chatcore, floor], [floor, limited], [floor_counted, chatcore_counted]]
    assert Fleet.concurrency(plan) == 2

    seen = []
    async with httpx.AsyncClient() as client:
        fleet = Fleet(plan, lambda spec: Recorded(spec.name, [], {}, 0, tmp_path, spec=spec), warm_up, client)
        for index in range(len(plan)):
            seen.append([server.name for server in await fleet.servers_for(index)])
            await fleet.release_after(index)
    assert seen == [[s.name for s in specs] for specs in plan]
    assert events == [
        "start floor",
        "start chatcore",
        "warm floor",
        "warm chatcore",
        "stop chatcore",
        f"start {limited.name}",
        f"warm {limited.name}",
        "stop floor",
        f"stop {limited.name}",
        "start floor (counted)",
        "start chatcore (counted)",
        "warm floor (counted)",
        "warm chatcore (counted)",
        "stop floor (counted)",
        "stop chatcore (counted)",
    ]
    assert set(fleet.startup_rss_mb) == {spec.name for specs in plan for spec in specs}
    assert not fleet.running
