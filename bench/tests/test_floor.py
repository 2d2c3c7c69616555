"""The floor keeps chatcore's HTTP contract and tables (needs the local PostgreSQL, as ``make bench`` does)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import httpx2
import jwt
import pytest

from bench.database import migrate
from bench.fake_model import FakeModelApp, FakeModelConfig
from bench.floor import FloorApp, FloorSettings

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "floor-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
async def dsn() -> AsyncIterator[str]:
    name = f"bench_floor_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(ADMIN_DSN)
    except OSError as error:
        pytest.fail(f"the floor tests need PostgreSQL at {ADMIN_DSN}: {error}")
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        await migrate(dsn.replace("postgresql://", "postgresql+asyncpg://"))
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def model() -> FakeModelApp:
    return FakeModelApp(FakeModelConfig())


@pytest.fixture
async def client(dsn: str, model: FakeModelApp) -> AsyncIterator[httpx.AsyncClient]:
    settings = FloorSettings(dsn=dsn, secret=SECRET.encode(), model_url="http://model/v1/chat/completions")
    app = FloorApp(settings, model_transport=httpx2.ASGITransport(app=model))
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
