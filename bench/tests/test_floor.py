"""The floor keeps chatcore's HTTP contract and tables (needs the local PostgreSQL, as ``make bench`` does)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import jwt
import pytest
import uvicorn

from bench.fake_model import FakeModelApp, FakeModelConfig, echo
from bench.floor import FloorApp, FloorSettings
from bench.sse import Event, events

SECRET = "floor-test-secret-0123456789abcdef"


@pytest.fixture
def model() -> FakeModelApp:
    return FakeModelApp(FakeModelConfig())


@contextlib.asynccontextmanager
async def listening(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port (the floor reads streams with aiohttp, over real HTTP)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def serving(dsn: str, model: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The floor from lifespan start to shutdown, its model calls going to the ASGI app ``model`` over HTTP."""
    async with listening(model) as model_url, floor_app(dsn, f"{model_url}/v1/chat/completions") as http:
        yield http


@contextlib.asynccontextmanager
async def floor_app(dsn: str, model_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = FloorSettings(dsn=dsn, secret=SECRET.encode(), model_url=model_url)
    app = FloorApp(settings)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://floor") as http:
            yield http
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)


@pytest.fixture
async def client(dsn: str, model: FakeModelApp) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(dsn, model) as http:
        yield http


def auth(user_id: str) -> dict[str, str]:
    token = jwt.encode({"sub": user_id, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


async def test_a_conversation_with_a_tool_turn_is_stored_in_order(
    client: httpx.AsyncClient, model: FakeModelApp, dsn: str
) -> None:
    first = await client.post("/api/ann/chat", json={"message": "Hello"}, headers=auth("ann"))
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    assert first.json()["tool_calls"] == []

    model.config = FakeModelConfig(mode="tool")
    second = await client.post(
        "/api/ann/chat", json={"message": "Buy milk", "conversation_id": conversation_id}, headers=auth("ann")
    )
    assert second.status_code == 200, second.text
    reply = second.json()
    assert reply["response"] == "Done: I added that task to your list."
    [call] = reply["tool_calls"]
    assert call["arguments"] == {"title": "Buy milk"}
    assert call["result"]["status"] == "created"

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT seq, role, tool_call_id, id FROM messages WHERE conversation_id = $1 ORDER BY seq",
            uuid.UUID(conversation_id),
        )
        last_seq = await connection.fetchval(
            "SELECT last_seq FROM conversations WHERE id = $1", uuid.UUID(conversation_id)
        )
        task = await connection.fetchrow("SELECT user_id, title FROM tasks WHERE id = $1", call["result"]["task_id"])
    finally:
        await connection.close()
    assert [(r["seq"], r["role"]) for r in rows] == [
        (1, "user"),
        (2, "assistant"),
        (3, "user"),
        (4, "assistant"),
        (5, "tool"),
        (6, "assistant"),
    ]
    assert rows[4]["tool_call_id"] == call["id"]
    assert str(rows[5]["id"]) == reply["message_id"]
    assert last_seq == 6
    assert dict(task) == {"user_id": "ann", "title": "Buy milk"}


async def test_concurrent_turns_on_one_conversation_get_distinct_sequence_numbers(
    client: httpx.AsyncClient, dsn: str
) -> None:
    first = await client.post("/api/cy/chat", json={"message": "Hi"}, headers=auth("cy"))
    conversation_id = first.json()["conversation_id"]
    replies = await asyncio.gather(
        *(
            client.post(
                "/api/cy/chat", json={"message": f"m{i}", "conversation_id": conversation_id}, headers=auth("cy")
            )
            for i in range(5)
        )
    )
    assert [r.status_code for r in replies] == [200] * 5
    connection = await asyncpg.connect(dsn)
    try:
        seqs = await connection.fetch(
            "SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", uuid.UUID(conversation_id)
        )
    finally:
        await connection.close()
    assert [r["seq"] for r in seqs] == list(range(1, 13))


async def test_errors_follow_chatcores_statuses(client: httpx.AsyncClient) -> None:
    owned = await client.post("/api/bob/chat", json={"message": "Hi"}, headers=auth("bob"))
    conversation_id = owned.json()["conversation_id"]
    other = await client.post(
        "/api/eve/chat", json={"message": "Hi", "conversation_id": conversation_id}, headers=auth("eve")
    )
    assert other.status_code == 404
    assert (await client.post("/api/bob/chat", json={"message": "Hi"}, headers=auth("eve"))).status_code == 403
    assert (await client.post("/api/bob/chat", json={"message": "Hi"})).status_code == 401
    bad = {"authorization": "Bearer " + jwt.encode({"sub": "bob", "exp": 1}, SECRET, algorithm="HS256")}
    assert (await client.post("/api/bob/chat", json={"message": "Hi"}, headers=bad)).status_code == 401
    assert (await client.post("/api/bob/chat", json={"message": "  "}, headers=auth("bob"))).status_code == 400
    assert (await client.post("/api/bob/chat", content=b"{", headers=auth("bob"))).status_code == 400
    assert (await client.get("/nope")).status_code == 404


async def _stream_events(client: httpx.AsyncClient, user_id: str, body: dict[str, Any]) -> list[Event]:
    headers = {**auth(user_id), "accept": "text/event-stream"}
    async with client.stream("POST", f"/api/{user_id}/chat", json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event async for event in events(response.aiter_raw())]


async def test_a_streamed_turn_forwards_every_piece_and_stores_the_turn(
    client: httpx.AsyncClient, model: FakeModelApp, dsn: str
) -> None:
    model.config = FakeModelConfig(reply_chars=160, chunks=16)
    streamed = await _stream_events(client, "dee", {"message": "Tell me a story"})

    assert [e.event for e in streamed] == [b"delta"] * 16 + [b"done"]
    text = "".join(json.loads(e.data)["text"] for e in streamed[:-1])
    assert text == echo("Tell me a story", 160)
    done = json.loads(streamed[-1].data)
    assert done["response"] == text
    assert done["tool_calls"] == []
    assert model.stats.streams == 1

    model.config = FakeModelConfig(mode="tool", reply_chars=40, chunks=4)
    second = await _stream_events(client, "dee", {"message": "Buy milk", "conversation_id": done["conversation_id"]})
    reply = json.loads(second[-1].data)
    [call] = reply["tool_calls"]
    assert (call["name"], call["arguments"], call["result"]["status"]) == ("add_task", {"title": "Buy milk"}, "created")
    assert reply["response"] == "".join(json.loads(e.data)["text"] for e in second if e.event == b"delta")

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY seq",
            uuid.UUID(done["conversation_id"]),
        )
    finally:
        await connection.close()
    assert [r["role"] for r in rows] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert rows[1]["content"] == text
    assert rows[5]["content"] == reply["response"]


async def test_a_streamed_turn_ends_with_an_error_event_when_the_model_fails(dsn: str) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with serving(dsn, broken) as http:
        streamed = await _stream_events(http, "eve", {"message": "Hi"})
        refused = await http.post(
            "/api/eve/chat", json={"message": " "}, headers={**auth("eve"), "accept": "text/event-stream"}
        )
    assert [e.event for e in streamed] == [b"error"]
    assert json.loads(streamed[0].data) == {"status_code": 502, "detail": "The model provider failed"}
    assert refused.status_code == 400
