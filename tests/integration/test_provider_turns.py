"""Whole tool turns over HTTP with each model adapter talking to a local fake of its provider's API.

The app is built by the container from Settings, as in production; only the provider's base URL
points at ``FakeProviderServer`` (a real HTTP server speaking both wire formats and behaving like a
todo model). The same conversation — add a task, list tasks, complete it — runs with the offline
agent, the OpenAI and Anthropic wire formats, and with a tool mounted from a real MCP server
process. Every provider failure is checked as the client sees it.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore

from ..fake_providers import FailureKind, FakeProviderServer, Provider
from .conftest import AppClient, auth

pytestmark = pytest.mark.integration

OPENAI_KEY = "sk-test-SECRET-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-SECRET-anthropic-0123456789"
KEYS = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}
LLM_TIMEOUT_SECONDS = 1.0
"""Short, so that the fake's slow reply becomes a 504 quickly; a local reply takes milliseconds."""
ECHO_SERVER = Path(__file__).parents[1] / "contract" / "mcp_fixtures" / "echo_server.py"
TODO_TOOLS = ["add_task", "list_tasks", "complete_task", "delete_task", "update_task"]


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


def settings_for(llm: str, fake: FakeProviderServer, **extra: Any) -> dict[str, Any]:
    """Settings overrides that point the chosen adapter at the fake, as OPENAI_BASE_URL/ANTHROPIC_BASE_URL would."""
    common = {"llm": llm, "llm_max_retries": 0, "llm_timeout_seconds": LLM_TIMEOUT_SECONDS, **extra}
    if llm == "openai":
        return {"openai_base_url": f"{fake.url}/v1", "openai_api_key": OPENAI_KEY, **common}
    if llm == "anthropic":
        return {"anthropic_base_url": fake.url, "anthropic_api_key": ANTHROPIC_KEY, **common}
    return common


def mcp_echo_server() -> str:
    """CHATCORE_MCP_SERVERS mounting the SDK-built fixture server over stdio."""
    return json.dumps([{"name": "fixture", "command": [sys.executable, str(ECHO_SERVER), "stdio"]}])


async def say(client: AsyncTestClient[Any], user: str, message: str, conversation: str | None = None) -> Any:
    payload: dict[str, Any] = {"message": message}
    if conversation is not None:
        payload["conversation_id"] = conversation
    response = await client.post(f"/api/{user}/chat", json=payload, headers=auth(user))
    assert response.status_code == 200, response.text
    return response.json()


def calls_of(reply: Any) -> list[tuple[str, Any, Any]]:
    return [(call["name"], call["arguments"], call.get("result")) for call in reply["tool_calls"]]


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def tasks_in_database(engine: AsyncEngine, user: str) -> list[tuple[str, bool]]:
    return [(task.title, task.completed) for task in await SqlAlchemyTaskStore(engine).list(user)]


# --- the same conversation, four ways ---------------------------------------------------------------------------


@pytest.mark.parametrize("llm", ["offline", "openai", "anthropic"])
async def test_add_list_and_complete_a_task(
    app_client: AppClient, pg_engine: AsyncEngine, fake: FakeProviderServer, llm: str
) -> None:
    user = new_user()
    settings = settings_for(llm, fake)
    async with app_client(**settings) as client:
        added = await say(client, user, "Add a task to buy milk")
    [(name, arguments, created)] = calls_of(added)
    assert (name, arguments) == ("add_task", {"title": "Buy milk"})
    assert created == {"task_id": created["task_id"], "status": "created", "title": "Buy milk"}
    conversation, task_id = added["conversation_id"], created["task_id"]

    # A second app instance: nothing of the first turn survives in memory, history comes from the database.
    async with app_client(**settings) as client:
        listed = await say(client, user, "Show me all my tasks", conversation)
        completed = await say(client, user, f"Mark task {task_id} as complete", conversation)

    [(name, _, tasks)] = calls_of(listed)
    assert name == "list_tasks"
    assert [(t["id"], t["title"], t["completed"]) for t in tasks] == [(task_id, "Buy milk", False)]
    assert calls_of(completed) == [
        ("complete_task", {"task_id": task_id}, {"task_id": task_id, "status": "completed", "title": "Buy milk"})
    ]
    assert listed["conversation_id"] == completed["conversation_id"] == conversation
    assert "Buy milk" in added["response"]
    assert "Buy milk" in completed["response"]
    assert await tasks_in_database(pg_engine, user) == [("Buy milk", True)]

    if llm == "offline":
        assert fake.requests == []
        return
    bodies = fake.bodies(cast(Provider, llm))
    assert len(bodies) == 6  # two model calls per turn: the tool call, then the answer
    assert all(r.path == ("/v1/chat/completions" if llm == "openai" else "/v1/messages") for r in fake.requests)
    assert_the_second_turn_replays_the_first_exactly(llm, bodies, added, created)


def assert_the_second_turn_replays_the_first_exactly(
    llm: str, bodies: list[dict[str, Any]], added: Any, created: Any
) -> None:
    """Turn two's first request holds turn one (user words, tool call, tool result, answer), strings and all."""
    in_turn, next_turn = bodies[1], bodies[2]
    [call] = added["tool_calls"]
    result_text = json.dumps(created, ensure_ascii=False)
    if llm == "openai":
        assert in_turn["messages"][1:] == [
            {"role": "user", "content": "Add a task to buy milk"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": "add_task", "arguments": '{"title":"Buy milk"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": result_text},
        ]
        assert call["id"].startswith("call_")
        assert next_turn["messages"] == [
            *in_turn["messages"],
            {"role": "assistant", "content": added["response"]},
            {"role": "user", "content": "Show me all my tasks"},
        ]
    else:
        assert in_turn["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Add a task to buy milk"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "I'll take care of that."},
                    {"type": "tool_use", "id": call["id"], "name": "add_task", "input": {"title": "Buy milk"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": result_text}]},
        ]
        assert call["id"].startswith("toolu_")
        assert next_turn["messages"] == [
            *in_turn["messages"],
            {"role": "assistant", "content": [{"type": "text", "text": added["response"]}]},
            {"role": "user", "content": [{"type": "text", "text": "Show me all my tasks"}]},
        ]
        assert next_turn["system"] == in_turn["system"]


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_the_request_carries_the_settings_the_tools_and_a_system_prompt_with_email_and_date(
    app_client: AppClient, fake: FakeProviderServer, llm: Provider
) -> None:
    user = new_user()
    settings = settings_for(llm, fake, model="fake-model-1", max_tokens=333, temperature=0.25)
    before = datetime.now(UTC).date().isoformat()
    async with app_client(**settings) as client:
        await say(client, user, "Hello there")
    after = datetime.now(UTC).date().isoformat()

    [request] = fake.requests
    [body] = fake.bodies(llm)
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("fake-model-1", 333, 0.25)
    if llm == "openai":
        system = body["messages"][0]
        assert system["role"] == "system"
        prompt = system["content"]
        assert [t["function"]["name"] for t in body["tools"]] == TODO_TOOLS
        assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in body["tools"])
        assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    else:
        prompt = body["system"]
        assert all(m["role"] != "system" for m in body["messages"])
        assert [t["name"] for t in body["tools"]] == TODO_TOOLS
        assert all(t["input_schema"]["type"] == "object" for t in body["tools"])
        assert ANTHROPIC_KEY in (request.headers.get("x-api-key", "") + request.headers.get("authorization", ""))
        assert request.headers["anthropic-version"]
    assert f"{user}@example.com" in prompt
    assert before in prompt or after in prompt
    assert "todo" in prompt.lower()


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_several_tool_calls_from_one_response_all_run_and_are_all_reported(
    app_client: AppClient, pg_engine: AsyncEngine, fake: FakeProviderServer, llm: Provider
) -> None:
    user = new_user()
    async with app_client(**settings_for(llm, fake)) as client:
        reply = await say(client, user, "Add a task to buy milk and a task to call mom")

    assert [(name, arguments) for name, arguments, _ in calls_of(reply)] == [
        ("add_task", {"title": "Buy milk"}),
        ("add_task", {"title": "Call mom"}),
    ]
    assert [result["status"] for _, _, result in calls_of(reply)] == ["created", "created"]
    assert sorted(await tasks_in_database(pg_engine, user)) == [("Buy milk", False), ("Call mom", False)]
    answer_request = fake.bodies(llm)[1]
    if llm == "openai":
        assert [m["role"] for m in answer_request["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    else:  # both results travel as blocks of one user message
        assert [block["type"] for block in answer_request["messages"][-1]["content"]] == ["tool_result", "tool_result"]


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_a_tool_mounted_from_an_mcp_server_joins_the_conversation(
    app_client: AppClient, pg_engine: AsyncEngine, fake: FakeProviderServer, llm: Provider
) -> None:
    user = new_user()
    async with app_client(**settings_for(llm, fake, mcp_servers=mcp_echo_server())) as client:
        added = await say(client, user, "Add a task to buy milk")
        conversation = added["conversation_id"]
        task_id = added["tool_calls"][0]["result"]["task_id"]
        echoed = await say(client, user, "Echo hello from MCP", conversation)
        listed = await say(client, user, "Show me all my tasks", conversation)
        completed = await say(client, user, f"Mark task {task_id} as complete", conversation)

    assert calls_of(echoed) == [("echo", {"text": "hello from MCP"}, "hello from MCP")]
    assert 'echo returned "hello from MCP"' in echoed["response"]
    assert [t["title"] for t in calls_of(listed)[0][2]] == ["Buy milk"]
    assert calls_of(completed)[0][2]["status"] == "completed"
    assert await tasks_in_database(pg_engine, user) == [("Buy milk", True)]

    first = fake.bodies(llm)[0]
    offered = [t["function"]["name"] if llm == "openai" else t["name"] for t in first["tools"]]
    assert offered[:5] == TODO_TOOLS  # chatcore's own tools first, then the mounted server's
    assert {"echo", "add", "slow"} <= set(offered[5:])


async def test_a_down_mcp_server_leaves_its_tools_out_and_the_turn_goes_on(
    app_client: AppClient, fake: FakeProviderServer
) -> None:
    user = new_user()
    broken = json.dumps([{"name": "broken", "command": [sys.executable, "-c", "pass"]}])
    async with app_client(**settings_for("openai", fake, mcp_servers=broken)) as client:
        added = await say(client, user, "Add a task to buy milk")
        echoed = await say(client, user, "Echo anyone there?", added["conversation_id"])

    assert calls_of(added)[0][2]["status"] == "created"
    assert echoed["tool_calls"] == []
    assert echoed["response"] == "I have no tool named echo."
    assert [t["function"]["name"] for t in fake.bodies("openai")[0]["tools"]] == TODO_TOOLS


# --- provider failures, as the client sees them ------------------------------------------------------------------

FAILURES: list[tuple[FailureKind, int]] = [
    ("rate_limit", 503),
    ("server_error", 502),
    ("unauthorized", 502),
    ("context_length", 422),
    ("slow", 504),
]


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_each_provider_failure_has_its_status_and_the_conversation_goes_on(
    app_client: AppClient, fake: FakeProviderServer, llm: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    user, key, provider_name = new_user(), KEYS[llm], PROVIDER_NAMES[llm]
    async with app_client(**settings_for(llm, fake)) as client:
        started = await say(client, user, "Add a task to buy milk")
        conversation = started["conversation_id"]

        for kind, status in FAILURES:
            fake.fail_next(kind)
            failed = await client.post(
                f"/api/{user}/chat",
                json={"message": f"Show me all my tasks ({kind})", "conversation_id": conversation},
                headers=auth(user),
            )
            assert failed.status_code == status, (kind, failed.text)
            body = failed.json()
            assert body["conversation_id"] == conversation
            assert key not in failed.text
            assert key not in str(dict(failed.headers))
            match kind:
                case "rate_limit":
                    assert failed.headers["retry-after"] == "7"
                    assert provider_name in body["detail"]
                case "server_error":
                    assert body["detail"] == f"{provider_name} request failed: server error (HTTP 500)"
                case "unauthorized":
                    assert body["detail"] == f"{provider_name} request failed: authentication error"
                case "context_length":
                    assert "too long" in body["detail"]
                    assert "new conversation" in body["detail"]
                case "slow":
                    assert body["detail"] == f"{provider_name} request timed out"

            recovered = await say(client, user, "Show me all my tasks", conversation)
            assert recovered["conversation_id"] == conversation
            assert [t["title"] for t in calls_of(recovered)[0][2]] == ["Buy milk"]

    assert key not in caplog.text
    # Every request after a failure was accepted by the fake's checks, unanswered user messages included.
    assert len(fake.requests) == 2 + len(FAILURES) * 3


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_a_refused_connection_is_502_naming_the_provider(
    app_client: AppClient, fake: FakeProviderServer, llm: Provider
) -> None:
    user = new_user()
    fake.stop()  # its port now refuses connections
    async with app_client(**settings_for(llm, fake)) as client:
        failed = await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user))

    assert failed.status_code == 502
    assert failed.json()["detail"] == f"{PROVIDER_NAMES[llm]} request failed: could not connect"
    assert KEYS[llm] not in failed.text
    uuid.UUID(failed.json()["conversation_id"])


@pytest.mark.parametrize("llm", ["offline", "openai", "anthropic"])
async def test_a_streamed_turn_over_each_providers_event_stream_answers_as_the_json_turn(
    app_client: AppClient, fake: FakeProviderServer, llm: str
) -> None:
    """Over each provider's real event stream (read raw by the agents), the SSE turn is the JSON turn in pieces."""
    user = new_user()
    async with app_client(**settings_for(llm, fake)) as client:
        streamed = await client.post(
            f"/api/{user}/chat",
            json={"message": "Add a task to buy milk"},
            headers={**auth(user), "Accept": "text/event-stream"},
        )
        plain = await say(client, user, "Add a task to buy eggs")

    assert streamed.status_code == 200, streamed.text
    events = [
        (fields["event"], json.loads(fields["data"]))
        for fields in (
            dict(line.partition(": ")[::2] for line in block.split("\n"))
            for block in streamed.text.replace("\r\n", "\n").strip().split("\n\n")
        )
    ]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "turn"
    assert kinds[-1] == "done"
    assert [kind for kind in kinds if kind != "delta"] == ["turn", "tool_call", "tool_result", "done"]
    done = events[-1][1]
    # Claude says a few words before its tool call: they stream too, the reply is the last step's text.
    assert "".join(data["text"] for kind, data in events if kind == "delta").endswith(done["response"])
    assert [(c["name"], c["arguments"]) for c in done["tool_calls"]] == [("add_task", {"title": "Buy milk"})]
    assert done["tool_calls"][0]["result"]["status"] == "created"
    # The same words as the JSON turn's (its task is eggs, with the next id).
    assert re.sub(r"\d+", "N", done["response"].replace("milk", "eggs")) == re.sub(r"\d+", "N", plain["response"])
    if llm != "offline":  # the streamed steps asked for streams, the JSON ones did not
        streamed_flags = [body.get("stream") is True for body in fake.bodies(cast(Provider, llm))]
        assert streamed_flags == [True, True, False, False]
