"""Streamed retries over HTTP on real ``chatcore serve`` processes sharing one PostgreSQL database.

``Idempotency-Key`` on ``POST /api/{user}/chat`` with ``Accept: text/event-stream``: a repeat sent to the other
replica while the first stream runs follows the same turn (from the start, or after ``Last-Event-ID``); a repeat
after it ended replays its events; the key with another body is 422; a JSON repeat of a streamed request gets its
reply, and a streamed repeat of a JSON request gets that reply as events, also once ``chatcore gc`` deleted the
turn's events while the key still lives. The model is the offline agent, its words paced so a turn lasts seconds.

The replicas have a database of their own: ``chatcore gc`` deletes across users.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.migrate import run_migrations_async
from chatcore.adapters.sqlalchemy.tables import turn_events

from ..conftest import fresh_database
from .conftest import auth
from .test_exactly_once import CHATCORE, Replica, launch, replica_env, stop, wait_until_serving

pytestmark = pytest.mark.integration

SSE = {"Accept": "text/event-stream"}
WORD_DELAY = "0.25"
"""Seconds between the offline agent's words: a reply of a dozen words streams for about three seconds."""
GC_SUMMARY = re.compile(r"deleted (\d+) turn events")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def database(postgres_server: URL) -> AsyncIterator[str]:
    async with fresh_database(postgres_server) as url:
        await run_migrations_async(url)
        yield url


@pytest.fixture(scope="module")
def replicas(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    directory = tmp_path_factory.mktemp("streamed-retries")
    env = replica_env(
        database,
        "http://127.0.0.1:9",  # the offline agent calls no provider
        CHATCORE_LLM="offline",
        CHATCORE_OFFLINE_WORD_DELAY=WORD_DELAY,
        CHATCORE_JANITOR="false",
    )
    started = (launch("a", env, directory), launch("b", env, directory))
    try:
        wait_until_serving(started)
        yield started
    finally:
        for replica in started:
            stop(replica)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database, pool_size=2)
    yield engine
    await engine.dispose()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def headers(user: str, key: str, **extra: str) -> dict[str, str]:
    return {**auth(user), "Idempotency-Key": key, **extra}


def parse_block(block: str) -> dict[str, Any]:
    fields = dict(line.partition(": ")[::2] for line in block.split("\n") if line)
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


async def events_of(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """A streamed response's events as they arrive."""
    assert response.status_code == 200, await response.aread()
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield parse_block(block)


async def streamed(
    client: httpx.AsyncClient, replica: Replica, user: str, body: dict[str, Any], key: str, **extra: str
) -> list[dict[str, Any]]:
    async with client.stream(
        "POST", replica.chat_url(user), json=body, headers=headers(user, key, **SSE, **extra)
    ) as response:
        return [event async for event in events_of(response)]


async def tasks_of(client: httpx.AsyncClient, replica: Replica, user: str) -> list[str]:
    response = await client.get(f"{replica.url}/api/{user}/tasks", headers=auth(user))
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


def done_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The done event a JSON reply corresponds to: its fields, a tool call's error only when there is one."""
    calls = [{k: v for k, v in call.items() if k != "error" or v is not None} for call in reply["tool_calls"]]
    for call in calls:
        if "error" in call:
            call.pop("result", None)
    return {**reply, "tool_calls": calls, "interrupted": reply["status"] == "interrupted"}


async def test_a_repeat_on_the_other_replica_follows_the_running_turn_and_replays_it_once_it_ended(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    user, key = new_user(), str(uuid.uuid4())
    body = {"message": "Add a task to buy oat milk and fresh bread from the corner shop"}

    async with asyncio.timeout(60), httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", a.chat_url(user), json=body, headers=headers(user, key, **SSE)) as first:
            events = events_of(first)
            original = [await anext(events) for _ in range(4)]  # turn, tool_call, tool_result, the first word
            # The turn is still streaming its words on a: repeats on b attach to it.
            from_start, after_two = await asyncio.gather(
                streamed(client, b, user, body, key),
                streamed(client, b, user, body, key, **{"Last-Event-ID": "2"}),
            )
            original += [event async for event in events]
        replayed_a = await streamed(client, a, user, body, key)
        replayed_b = await streamed(client, b, user, body, key, **{"Last-Event-ID": str(len(original) - 1)})
        json_repeat = await client.post(b.chat_url(user), json=body, headers=headers(user, key))
        reused = await client.post(
            b.chat_url(user), json={"message": "Add a task to buy tea"}, headers=headers(user, key, **SSE)
        )
        tasks = await tasks_of(client, a, user)

    assert [e["event"] for e in original[:3]] == ["turn", "tool_call", "tool_result"]
    assert original[-1]["event"] == "done"
    assert len([e for e in original if e["event"] == "delta"]) > 5, "the repeats came while it streamed"
    assert [e["id"] for e in original] == list(range(1, len(original) + 1))
    assert from_start == original
    assert after_two == original[2:]
    assert replayed_a == original
    assert replayed_b == original[-1:]
    assert json_repeat.status_code == 200, json_repeat.text
    assert done_of(json_repeat.json()) == original[-1]["data"]
    assert reused.status_code == 422, reused.text
    assert "different request" in reused.json()["detail"]
    assert tasks == ["Buy oat milk and fresh bread from the corner shop"], "one turn, one tool call"


async def test_a_streamed_repeat_of_a_json_request_gets_its_reply_as_events_also_after_gc(
    replicas: tuple[Replica, Replica], database: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    a, b = replicas
    user = new_user()
    json_key, streamed_key = str(uuid.uuid4()), str(uuid.uuid4())
    async with asyncio.timeout(60), httpx.AsyncClient(timeout=30) as client:
        plain = await client.post(
            a.chat_url(user), json={"message": "Add a task to call mom"}, headers=headers(user, json_key)
        )
        assert plain.status_code == 200, plain.text
        reply = plain.json()
        told = await streamed(client, b, user, {"message": "Add a task to call mom"}, json_key)

        second = {"message": "Add a task to water the plants", "conversation_id": reply["conversation_id"]}
        original = await streamed(client, a, user, second, streamed_key)
        turn_id = uuid.UUID(original[0]["data"]["turn_id"])
        await asyncio.sleep(1.5)  # both turns ended more than the retention below ago
        gc = await asyncio.create_subprocess_exec(
            CHATCORE,
            "gc",
            env=replica_env(database, "http://127.0.0.1:9", CHATCORE_EVENT_RETENTION="1s"),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        gc_out, gc_err = await gc.communicate()
        async with engine.connect() as connection:
            left = await connection.scalar(
                select(func.count()).select_from(turn_events).where(turn_events.c.turn_id == turn_id)
            )
        after_gc = await streamed(client, b, user, second, streamed_key)
        json_after_gc = await client.post(b.chat_url(user), json=second, headers=headers(user, streamed_key))
        tasks = await tasks_of(client, b, user)

    assert [e["event"] for e in told] == ["turn", "tool_call", "tool_result", "delta", "done"]
    assert [e["id"] for e in told] == [1, 2, 3, 4, 5]
    assert told[-1]["data"] == done_of(reply)
    assert told[0]["data"]["message_id"] == reply["message_id"]
    assert told[1]["data"]["name"] == "add_task"
    assert told[3]["data"]["text"] == reply["response"]

    assert gc.returncode == 0, gc_err.decode()
    assert int(GC_SUMMARY.search(gc_out.decode()).group(1)) >= len(original)  # type: ignore[union-attr]
    assert left == 0
    assert [e["event"] for e in after_gc] == ["turn", "tool_call", "tool_result", "delta", "done"]
    assert after_gc[0]["data"] == original[0]["data"], "the same turn, user message and reply ids"
    assert after_gc[-1]["data"] == original[-1]["data"]
    assert done_of(json_after_gc.json()) == original[-1]["data"]
    assert sorted(tasks) == ["Call mom", "Water the plants"]
