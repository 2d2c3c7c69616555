"""Streaming replies over HTTP on PostgreSQL: SSE event order, storage, disconnects, resume, stop, two replicas.

Complete streams go through the in-process test client (it reads a response to its end); the tests
that disconnect, stop or resume a turn mid-stream run the app on a real uvicorn server instead.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from dependency_injector import providers

from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.errors import AgentUnavailable
from chatcore.fakes import ScriptedAgent
from chatcore.model import AgentRequest, AgentResponse, AgentStreamEvent, TextDelta, ToolCall
from chatcore.ports import LLMAgent

from .conftest import SECRET, AppClient, auth

pytestmark = pytest.mark.integration

SSE = {"Accept": "text/event-stream"}


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Each event as {id, event, data}: the wire format a browser's EventSource reads."""
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


async def test_a_streamed_turn_sends_every_event_in_order_and_stores_what_the_json_turn_stores(
    app_client: AppClient,
) -> None:
    user = new_user()
    async with app_client() as client:
        streamed = await client.post(
            f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers={**auth(user), **SSE}
        )
        plain = await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user))

        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(streamed.text)
        kinds = [e["event"] for e in events]
        assert kinds[:3] == ["turn", "tool_call", "tool_result"]
        assert set(kinds[3:-1]) == {"delta"}
        assert kinds[-1] == "done"
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        done = events[-1]["data"]
        assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == done["response"]
        assert events[0]["data"]["conversation_id"] == done["conversation_id"]
        assert events[1]["data"]["name"] == "add_task"
        assert events[2]["data"]["result"]["status"] == "created"
        assert done["interrupted"] is False
        assert [c["name"] for c in done["tool_calls"]] == ["add_task"]

        body = plain.json()
        streamed_messages = await client.get(
            f"/api/{user}/conversations/{done['conversation_id']}/messages", headers=auth(user)
        )
        plain_messages = await client.get(
            f"/api/{user}/conversations/{body['conversation_id']}/messages", headers=auth(user)
        )

    def shape(page: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The stored turn without its ids (the second turn's task gets the next task id)."""
        return [
            (
                m["seq"],
                m["role"],
                re.sub(r"\d+", "N", m["content"]),
                m["status"],
                [(c["name"], c["arguments"], sorted(c["result"])) for c in m["tool_calls"]],
            )
            for m in page["items"]
        ]

    assert shape(streamed_messages.json()) == shape(plain_messages.json())
    assert streamed_messages.json()["items"][-1]["id"] == done["message_id"]


async def test_a_failure_after_the_stream_started_is_an_error_event_with_the_json_status(app_client: AppClient) -> None:
    user = new_user()
    async with app_client(agent=ScriptedAgent([AgentUnavailable(provider="scripted")])) as client:
        failed = await client.post(f"/api/{user}/chat", json={"message": "hi"}, headers={**auth(user), **SSE})
        unknown = await client.post(
            f"/api/{user}/chat",
            json={"message": "hi", "conversation_id": str(uuid.uuid4())},
            headers={**auth(user), **SSE},
        )
        empty = await client.post(f"/api/{user}/chat", json={"message": "   "}, headers={**auth(user), **SSE})
        unauthenticated = await client.post(f"/api/{user}/chat", json={"message": "hi"}, headers=SSE)

    events = parse_sse(failed.text)
    assert [e["event"] for e in events] == ["turn", "error"]
    assert events[-1]["data"] == {
        "status_code": 502,
        "detail": "The model provider is unavailable",
        "conversation_id": events[0]["data"]["conversation_id"],
    }
    assert [(e["event"], e["data"]["status_code"]) for e in parse_sse(unknown.text)] == [("error", 404)]
    assert (empty.status_code, unauthenticated.status_code) == (400, 401)


async def test_a_finished_turn_can_be_replayed_after_a_last_event_id(app_client: AppClient) -> None:
    user = new_user()
    async with app_client() as client:
        streamed = await client.post(
            f"/api/{user}/chat", json={"message": "Show my tasks"}, headers={**auth(user), **SSE}
        )
        events = parse_sse(streamed.text)
        turn = events[0]["data"]
        url = f"/api/{user}/conversations/{turn['conversation_id']}/turns/{turn['turn_id']}/events"

        resumed = await client.get(url, headers={**auth(user), **SSE, "Last-Event-ID": "2"})
        by_query = await client.get(url + "?after=3", headers=auth(user))
        intruder = new_user()
        stolen = await client.get(
            f"/api/{intruder}/conversations/{turn['conversation_id']}/turns/{turn['turn_id']}/events",
            headers=auth(intruder),
        )
        wrong_conversation = await client.get(
            f"/api/{user}/conversations/{uuid.uuid4()}/turns/{turn['turn_id']}/events", headers=auth(user)
        )

    assert resumed.status_code == 200
    assert parse_sse(resumed.text) == events[2:]
    assert parse_sse(by_query.text) == events[3:]
    assert (stolen.status_code, wrong_conversation.status_code) == (404, 404)


# --- mid-stream behaviour on a real server ---------------------------------------------------------------------


class GatedAgent:
    """Streams "Hello ", then waits for ``gate`` before finishing with "world." (complete() answers at once)."""

    provider = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest) -> AgentResponse:
        self.requests.append(request)
        return AgentResponse("A plain reply.")

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        self.requests.append(request)
        yield TextDelta("Hello ")
        self.waiting.set()
        await self.gate.wait()
        yield TextDelta("world.")
        yield AgentResponse("Hello world.")


@asynccontextmanager
async def served(postgres_url: str, agent: LLMAgent, **overrides: Any) -> AsyncIterator[str]:
    """The app on uvicorn on a free local port, with ``agent`` as the model (and settings ``overrides``); yields
    the base URL."""
    container = build_container(Settings(database_url=postgres_url, auth_secret=SECRET, **overrides))
    container.agent.override(providers.Object(agent))
    server = uvicorn.Server(uvicorn.Config(create_app(container), host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task


async def read_events(response: httpx.Response, until: str) -> AsyncIterator[dict[str, Any]]:
    """Events from a streaming response as they arrive, up to and including the first of type ``until``."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            [event] = parse_sse(block)
            yield event
            if event["event"] == until:
                return


async def messages_of(client: httpx.AsyncClient, user: str, conversation_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/{user}/conversations/{conversation_id}/messages", headers=auth(user))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_client_that_disconnects_mid_stream_finds_the_whole_turn_stored(postgres_url: str) -> None:
    user = new_user()
    agent = GatedAgent()
    async with served(postgres_url, agent) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream(
            "POST", f"/api/{user}/chat", json={"message": "Say hello"}, headers={**auth(user), **SSE}
        ) as response:
            seen = [event async for event in read_events(response, until="delta")]
        # The connection is closed; the turn is still waiting for the model.
        conversation_id = seen[0]["data"]["conversation_id"]
        agent.gate.set()

        stored: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(stored) < 2:
                await asyncio.sleep(0.05)
                stored = await messages_of(client, user, conversation_id)

    assert [e["event"] for e in seen] == ["turn", "delta"]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "Say hello", "complete"),
        ("assistant", "Hello world.", "complete"),
    ]


async def test_another_replica_resumes_a_running_turn_and_stops_it(postgres_url: str) -> None:
    user = new_user()
    agent = GatedAgent()
    async with (
        served(postgres_url, agent) as first,
        served(postgres_url, ScriptedAgent([AgentResponse("unused")])) as second,
        httpx.AsyncClient(base_url=first, timeout=10) as one,
        httpx.AsyncClient(base_url=second, timeout=10) as other,
    ):
        async with one.stream(
            "POST", f"/api/{user}/chat", json={"message": "Say hello"}, headers={**auth(user), **SSE}
        ) as response:
            seen = [event async for event in read_events(response, until="delta")]
        turn = seen[0]["data"]
        async with asyncio.timeout(10):
            await agent.waiting.wait()

        url = f"/api/{user}/conversations/{turn['conversation_id']}/turns/{turn['turn_id']}/events"
        async with other.stream("GET", url, headers={**auth(user), **SSE, "Last-Event-ID": "1"}) as resumed:
            events = read_events(resumed, until="done")
            replayed = await anext(events)
            stop = await other.post(f"/api/{user}/conversations/{turn['conversation_id']}/stop", headers=auth(user))
            rest = [event async for event in events]

        stored = await messages_of(other, user, turn["conversation_id"])
        again = await one.post(
            f"/api/{user}/chat",
            json={"message": "Go on", "conversation_id": turn["conversation_id"]},
            headers=auth(user),
        )
        not_running = await other.post(f"/api/{user}/conversations/{turn['conversation_id']}/stop", headers=auth(user))

    assert (replayed["id"], replayed["event"], replayed["data"]) == (2, "delta", {"text": "Hello "})
    assert stop.status_code == 202
    assert stop.json() == {"conversation_id": turn["conversation_id"], "stopped_turn_ids": [turn["turn_id"]]}
    assert [e["event"] for e in rest] == ["done"]
    assert (rest[0]["data"]["response"], rest[0]["data"]["interrupted"]) == ("Hello ", True)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "Say hello", "complete"),
        ("assistant", "Hello ", "interrupted"),
    ]
    assert again.status_code == 200, again.text
    assert agent.requests[-1].messages[1].content == "Hello \n[reply interrupted]"
    assert not_running.json()["stopped_turn_ids"] == []


# --- the history API -------------------------------------------------------------------------------------------


async def test_conversations_are_listed_newest_first_page_by_page_with_previews(app_client: AppClient) -> None:
    user = new_user()
    async with app_client() as client:
        ids = []
        for text in ("Add a task to buy milk", "Add a task to call mom", "Show me all my tasks"):
            response = await client.post(f"/api/{user}/chat", json={"message": text}, headers=auth(user))
            ids.append(response.json()["conversation_id"])
        first = await client.get(f"/api/{user}/conversations?limit=2", headers=auth(user))
        second = await client.get(
            f"/api/{user}/conversations?limit=2&cursor={first.json()['next_cursor']}", headers=auth(user)
        )
        bad_cursor = await client.get(f"/api/{user}/conversations?cursor=nonsense", headers=auth(user))
        too_many = await client.get(f"/api/{user}/conversations?limit=1000", headers=auth(user))
        others = await client.get(f"/api/{new_user()}/conversations", headers=auth(user))

    page = first.json()
    assert [c["id"] for c in page["items"] + second.json()["items"]] == list(reversed(ids))
    assert second.json()["next_cursor"] is None
    newest = page["items"][0]
    assert newest["title"] == "Show me all my tasks"
    assert "Buy milk" in newest["preview"]
    assert "Call mom" in newest["preview"]
    assert {"created_at", "updated_at"} <= set(newest)
    assert (bad_cursor.status_code, too_many.status_code, others.status_code) == (400, 400, 403)


async def test_messages_pages_show_tool_calls_with_results_and_other_users_get_404(app_client: AppClient) -> None:
    user, intruder = new_user(), new_user()
    async with app_client() as client:
        reply = await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user))
        conversation_id = reply.json()["conversation_id"]
        first = await client.get(f"/api/{user}/conversations/{conversation_id}/messages?limit=2", headers=auth(user))
        rest = await client.get(
            f"/api/{user}/conversations/{conversation_id}/messages?cursor={first.json()['next_cursor']}",
            headers=auth(user),
        )
        stolen = await client.get(f"/api/{intruder}/conversations/{conversation_id}/messages", headers=auth(intruder))
        unknown = await client.get(f"/api/{user}/conversations/{uuid.uuid4()}/messages", headers=auth(user))

    user_message, call_message = first.json()["items"]
    assert (user_message["role"], user_message["content"]) == ("user", "Add a task to buy milk")
    [call] = call_message["tool_calls"]
    assert (call["name"], call["arguments"], call["result"]["status"]) == ("add_task", {"title": "Buy milk"}, "created")
    assert [m["content"] for m in rest.json()["items"]] == [reply.json()["response"]]
    assert rest.json()["next_cursor"] is None
    assert (stolen.status_code, unknown.status_code) == (404, 404)


async def test_rename_and_delete_a_conversation(app_client: AppClient) -> None:
    user, intruder = new_user(), new_user()
    async with app_client() as client:
        reply = await client.post(f"/api/{user}/chat", json={"message": "hello"}, headers=auth(user))
        conversation_id = reply.json()["conversation_id"]
        url = f"/api/{user}/conversations/{conversation_id}"

        renamed = await client.patch(url, json={"title": "  My   plans "}, headers=auth(user))
        empty = await client.patch(url, json={"title": "   "}, headers=auth(user))
        stolen_rename = await client.patch(
            f"/api/{intruder}/conversations/{conversation_id}", json={"title": "mine"}, headers=auth(intruder)
        )
        stolen_delete = await client.delete(f"/api/{intruder}/conversations/{conversation_id}", headers=auth(intruder))
        listed = await client.get(f"/api/{user}/conversations", headers=auth(user))
        deleted = await client.delete(url, headers=auth(user))
        messages_after = await client.get(url + "/messages", headers=auth(user))
        deleted_again = await client.delete(url, headers=auth(user))
        continued = await client.post(
            f"/api/{user}/chat", json={"message": "hi", "conversation_id": conversation_id}, headers=auth(user)
        )

    assert renamed.status_code == 200
    assert (renamed.json()["id"], renamed.json()["title"]) == (conversation_id, "My plans")
    assert empty.status_code == 400
    assert (stolen_rename.status_code, stolen_delete.status_code) == (404, 404)
    assert listed.json()["items"][0]["title"] == "My plans"
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (messages_after.status_code, deleted_again.status_code, continued.status_code) == (404, 404, 404)


async def test_tasks_lists_the_users_tasks_for_a_side_panel(app_client: AppClient) -> None:
    user, other = new_user(), new_user()
    async with app_client() as client:
        await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user))
        added = await client.post(f"/api/{user}/chat", json={"message": "Add a task to call mom"}, headers=auth(user))
        task_id = added.json()["tool_calls"][0]["result"]["task_id"]
        await client.post(f"/api/{user}/chat", json={"message": f"Complete task {task_id}"}, headers=auth(user))
        everything = await client.get(f"/api/{user}/tasks", headers=auth(user))
        pending = await client.get(f"/api/{user}/tasks?status=pending", headers=auth(user))
        none = await client.get(f"/api/{other}/tasks", headers=auth(other))
        forbidden = await client.get(f"/api/{other}/tasks", headers=auth(user))
        bad_status = await client.get(f"/api/{user}/tasks?status=maybe", headers=auth(user))

    assert [(t["title"], t["completed"]) for t in everything.json()] == [("Buy milk", False), ("Call mom", True)]
    assert [t["title"] for t in pending.json()] == ["Buy milk"]
    assert none.json() == []
    assert (forbidden.status_code, bad_status.status_code) == (403, 400)


async def test_every_new_endpoint_is_in_the_openapi_schema_with_examples(app_client: AppClient) -> None:
    async with app_client() as client:
        schema = (await client.get("/schema/openapi.json")).json()

    paths = schema["paths"]
    expected = {
        "/api/{user_id}/conversations": ["get"],
        "/api/{user_id}/conversations/{conversation_id}": ["patch", "delete"],
        "/api/{user_id}/conversations/{conversation_id}/messages": ["get"],
        "/api/{user_id}/conversations/{conversation_id}/stop": ["post"],
        "/api/{user_id}/conversations/{conversation_id}/turns/{turn_id}/events": ["get"],
        "/api/{user_id}/tasks": ["get"],
    }
    for path, methods in expected.items():
        for method in methods:
            operation = paths[path][method]
            assert "401" in operation["responses"], (path, method)
            if method != "delete":
                success = next(r for status, r in operation["responses"].items() if status.startswith("2"))
                assert any("examples" in media for media in success["content"].values()), (path, method)
    assert "text/event-stream" in paths["/api/{user_id}/chat"]["post"]["description"]
    assert "/" not in paths
    assert "/dev/token" not in paths


async def test_the_chat_page_is_served_with_a_strict_policy_and_the_dev_token_only_in_dev_mode(
    app_client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATCORE_DEMO_TOKEN", "demo-token-value")
    async with app_client() as client:
        page = await client.get("/")
        hidden = await client.get("/dev/token")
    async with app_client(dev_mode=True) as client:
        shown = await client.get("/dev/token")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>chatcore</title>" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy
    assert hidden.status_code == 404
    assert shown.json() == {"user_id": "demo-user", "token": "demo-token-value"}


async def test_a_tool_call_event_precedes_its_result_for_a_model_with_several_steps(app_client: AppClient) -> None:
    user = new_user()
    call = ToolCall("call_1", "list_tasks", {"status": "all"})
    agent = ScriptedAgent([AgentResponse("Looking.", (call,)), AgentResponse("You have no tasks.")])
    async with app_client(agent=agent) as client:
        streamed = await client.post(f"/api/{user}/chat", json={"message": "tasks?"}, headers={**auth(user), **SSE})

    events = parse_sse(streamed.text)
    kinds = [e["event"] for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("done")
    text = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
    assert text == "Looking.You have no tasks."
    assert events[-1]["data"]["response"] == "You have no tasks."
