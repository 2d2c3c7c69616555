"""A PostgreSQL that refuses new connections ("sorry, too many clients already") is a 503 on every route, never a 500.

Under load a database at ``max_connections`` keeps the connections it has and refuses new ones with a FATAL
``53300`` after the startup packet. Whatever needs a new connection then (a turn's first statement, a history read,
the approvals endpoint, each streaming protocol before its stream starts) must answer 503 with ``Retry-After``,
and whatever was stored before must still be there when the database takes connections again. The app runs in
process against a TCP proxy (``FaultyTcpProxy.refuse_new``) that answers new connections exactly as PostgreSQL does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings

from .conftest import SECRET, auth
from .faulty_proxy import FaultyTcpProxy

pytestmark = pytest.mark.integration

Client = AsyncTestClient[Any]


@pytest_asyncio.fixture
async def refusing(postgres_url: str) -> AsyncIterator[tuple[Client, FaultyTcpProxy]]:
    """The app on the test database through the proxy (forwarding until told to refuse)."""
    url = make_url(postgres_url)
    with FaultyTcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(database_url=proxied, auth_secret=SECRET, llm="offline", approval_tools=("delete_task",))
        container = build_container(settings)
        async with AsyncTestClient(app=create_app(container), timeout=30) as client:
            yield client, proxy


def assert_unavailable(name: str, response: Any) -> None:
    if response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream"):
        # chatcore's own SSE answers as soon as the turn is handed to the background, so a turn that cannot
        # begin ends its stream with the error event, carrying the status and Retry-After the JSON answer has.
        [error] = stream_errors(response.text)
        assert (error["status_code"], error["detail"]) == (503, "The database is unavailable"), name
        assert error["retry_after"] > 0, name
        return
    assert response.status_code == 503, f"{name}: {response.status_code} {response.text[:300]}"
    assert int(response.headers["retry-after"]) > 0, name
    assert response.json()["detail"] == "The database is unavailable", name
    assert "too many" not in response.text, name
    assert "127.0.0.1" not in response.text, name


async def test_every_route_is_503_with_retry_after_while_new_connections_are_refused_and_nothing_is_lost(
    refusing: tuple[Client, FaultyTcpProxy],
) -> None:
    client, proxy = refusing
    user = f"refused-{uuid.uuid4().hex[:8]}"
    headers = auth(user)
    added = await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=headers)
    assert added.status_code == 200, added.text
    conversation_id = added.json()["conversation_id"]
    asked = await client.post(
        f"/api/{user}/chat",
        json={"message": "Delete the milk task", "conversation_id": conversation_id},
        headers=headers,
    )
    assert asked.json()["status"] == "awaiting_approval", asked.text
    [pending] = asked.json()["pending_approvals"]
    aliased = await client.post(
        f"/api/{user}/ai-sdk/chat",
        json={
            "id": "chat-refused",
            "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        },
        headers=headers,
    )
    assert aliased.status_code == 200

    # The pool's connections are dropped, so every request needs a new one, and gets "too many clients".
    proxy.refuse_new(drop_open=True)

    conversation = f"/api/{user}/conversations/{conversation_id}"
    stream = {**headers, "Accept": "text/event-stream"}
    ai_sdk_message = {"id": "m2", "role": "user", "parts": [{"type": "text", "text": "Add a task to buy eggs"}]}
    requests: dict[str, Any] = {
        "chat, new conversation": client.post(f"/api/{user}/chat", json={"message": "hello"}, headers=headers),
        "chat, continued": client.post(
            f"/api/{user}/chat", json={"message": "hello", "conversation_id": conversation_id}, headers=headers
        ),
        "chat, streamed": client.post(f"/api/{user}/chat", json={"message": "hello"}, headers=stream),
        "approvals": client.post(
            f"{conversation}/approvals",
            json={"decisions": [{"tool_call_id": pending["id"], "approved": True}]},
            headers=headers,
        ),
        "approvals, streamed": client.post(
            f"{conversation}/approvals",
            json={"decisions": [{"tool_call_id": pending["id"], "approved": True}]},
            headers=stream,
        ),
        "AI SDK chat": client.post(
            f"/api/{user}/ai-sdk/chat", json={"id": "chat-refused", "messages": [ai_sdk_message]}, headers=headers
        ),
        "AI SDK resume": client.get(f"/api/{user}/ai-sdk/chat/chat-refused/stream", headers=headers),
        "AI SDK messages": client.get(f"/api/{user}/ai-sdk/chat/chat-refused/messages", headers=headers),
        "AG-UI run": client.post(
            f"/api/{user}/ag-ui",
            json={
                "threadId": "thread-refused",
                "runId": "r1",
                "messages": [{"id": "m1", "role": "user", "content": "hi"}],
            },
            headers=headers,
        ),
        "conversations": client.get(f"/api/{user}/conversations", headers=headers),
        "conversation": client.get(conversation, headers=headers),
        "messages": client.get(f"{conversation}/messages", headers=headers),
        "rename": client.patch(conversation, json={"title": "renamed"}, headers=headers),
        "stop": client.post(f"{conversation}/stop", headers=headers),
        "tasks": client.get(f"/api/{user}/tasks", headers=headers),
        "usage": client.get(f"/api/{user}/usage", headers=headers),
    }
    for name, request in requests.items():
        assert_unavailable(name, await request)
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert proxy.refused > 0

    proxy.restore()
    history = (await client.get(f"{conversation}/messages", headers=headers)).json()["items"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["Add a task to buy milk", "Delete the milk task"]
    still_pending = (await client.get(conversation, headers=headers)).json()
    assert still_pending["pending_approvals"] == [pending]
    tasks = (await client.get(f"/api/{user}/tasks", headers=headers)).json()
    assert [t["title"] for t in tasks] == ["Buy milk"]
    approved = await client.post(
        f"{conversation}/approvals",
        json={"decisions": [{"tool_call_id": pending["id"], "approved": True}]},
        headers=headers,
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "complete"
    assert (await client.get(f"/api/{user}/tasks", headers=headers)).json() == []


def stream_errors(body: str) -> list[dict[str, Any]]:
    """The error events of a stream in any of the three protocols (native SSE, AI SDK, AG-UI)."""
    errors: list[dict[str, Any]] = []
    event = ""
    for line in body.splitlines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and line != "data: [DONE]":
            data = json.loads(line.removeprefix("data: "))
            if event == "error" or data.get("type") in ("error", "RUN_ERROR"):
                errors.append(data)
        elif not line:
            event = ""
    return errors
