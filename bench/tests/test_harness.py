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

from bench import procstat
from bench.database import seeded_messages
from bench.floor import model_messages
from bench.load import LoadResult, VirtualUser, percentile, run_load
from bench.measure import reply_check
from bench.profile import package_of, parse_raw, summarise
from bench.report import CHATCORE, FLOOR, KEPT_HEADING, Measurement, Report, kept_by_hand


def measurement(scenario: str, server: str, **figures: float) -> Measurement:
    values: dict[str, Any] = {
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
        users=1,
        turns_per_user=1,
        ok=10,
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
        client_factory=lambda: httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
    )
    assert result.turns == 5
    assert dict(result.failures) == {"HTTP 500": 1}
    assert not result.timed_out
    assert [c for p, c in seen if p == "/api/a/chat"] == [None, "conv-/api/a/chat", "conv-/api/a/chat"]
    assert [c for p, c in seen if p == "/api/b/chat"] == ["seeded", "conv-/api/b/chat", "conv-/api/b/chat"]


async def test_a_run_stops_at_its_deadline() -> None:
    async def stuck(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    result = await run_load(
        "http://bench",
        [VirtualUser("a", "t")],
        2,
        deadline_seconds=0.05,
        client_factory=lambda: httpx.AsyncClient(transport=httpx.ASGITransport(app=stuck)),
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


def test_a_scenario_far_below_what_its_users_could_ask_for_is_called_cpu_bound() -> None:
    from bench.measure import saturation_notes
    from bench.scenarios import Scenario

    slow = Scenario("slow-model", "500 ms model", 200, 3, 500, "text")
    instant = Scenario("overhead", "instant", 32, 15, 0, "text")
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


def test_the_hand_written_tuning_log_survives_a_rerun() -> None:
    log = f"{KEPT_HEADING}\n\nBefore: 12 ms a turn.\n\n### Profile before\n\n| a | b |\n"
    previous = f"# Performance\n\nold figures\n\n{log}"

    kept = kept_by_hand(previous)

    assert kept == f"\n{log}"
    assert "old figures" not in kept
    assert kept_by_hand("# Performance\n\nno log yet\n") == ""


def test_chatcore_settings_for_a_comparison_run_parse_as_name_and_value() -> None:
    import argparse

    from bench.run import _setting

    assert _setting("CHATCORE_LLM_HTTP=httpx") == ("CHATCORE_LLM_HTTP", "httpx")
    assert _setting("CHATCORE_SYSTEM_PROMPT=a=b") == ("CHATCORE_SYSTEM_PROMPT", "a=b")
    for bad in ("CHATCORE_LLM_HTTP", "=httpx"):
        with pytest.raises(argparse.ArgumentTypeError):
            _setting(bad)
