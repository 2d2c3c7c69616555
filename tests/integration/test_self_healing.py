"""Conversations that heal themselves, on real ``chatcore serve`` processes sharing one PostgreSQL database.

Replicas run the offline agent, its streamed words paced (CHATCORE_OFFLINE_WORD_DELAY) so a turn lasts
seconds, with a 2 s lease. A replica killed with SIGKILL in the middle of a streamed turn leaves the turn
``running``: a follower on another replica ends with the ``error`` event (the server handling this turn
stopped) once the lease expired, instead of waiting 300 s; the janitor closes such a turn when nobody
touches the conversation; the user message stays, marked unanswered, and the conversation goes on.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import turn_events, turns

from .conftest import auth
from .test_exactly_once import Replica, launch, replica_env, stop, wait_until_serving
from .test_http_streaming import read_events

pytestmark = pytest.mark.integration

SSE = {"Accept": "text/event-stream"}
DEAD = "the server handling this turn stopped"
LONG_MESSAGE = "please tell me " + " ".join(f"word{i}" for i in range(60))
"""The offline agent repeats what it did not understand: sixty words at 0.1 s each, six seconds of streaming."""
BOUND = 30.0
"""How long a test waits for what must happen within seconds (a follower left waiting would wait 300 s)."""


def offline_env(postgres_url: str, **extra: str) -> dict[str, str]:
    settings = {"CHATCORE_LLM": "offline", "CHATCORE_OFFLINE_WORD_DELAY": "0.1", "CHATCORE_JANITOR": "false"}
    return replica_env(postgres_url, "http://127.0.0.1:9", **{**settings, **extra})


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("self-healing")


@pytest.fixture(scope="module")
def replicas(postgres_url: str, directory: Path) -> Iterator[dict[str, Replica]]:
    """``a`` serves followers (no janitor); ``janitor`` sweeps every second."""
    envs = {
        "a": offline_env(postgres_url),
        "janitor": offline_env(postgres_url, CHATCORE_JANITOR="true", CHATCORE_JANITOR_INTERVAL="1s"),
    }
    started = {name: launch(name, env, directory) for name, env in envs.items()}
    try:
        wait_until_serving(list(started.values()))
        yield started
    finally:
        for replica in started.values():
            stop(replica)


@pytest.fixture
def victim(postgres_url: str, directory: Path) -> Iterator[Replica]:
    replica = launch(f"victim-{uuid.uuid4().hex[:6]}", offline_env(postgres_url), directory)
    try:
        wait_until_serving([replica])
        yield replica
    finally:
        stop(replica)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def killed_mid_stream(client: httpx.AsyncClient, victim: Replica, user: str) -> tuple[str, str]:
    """A streamed turn on ``victim``, killed (SIGKILL) once a few words were sent: (conversation id, turn id)."""
    async with client.stream(
        "POST", victim.chat_url(user), json={"message": LONG_MESSAGE}, headers={**auth(user), **SSE}
    ) as response:
        assert response.status_code == 200
        seen = []
        async for event in read_events(response, until="done"):
            seen.append(event)
            if len([e for e in seen if e["event"] == "delta"]) == 3:
                break
        victim.process.send_signal(signal.SIGKILL)
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
    first = seen[0]["data"]
    return first["conversation_id"], first["turn_id"]


async def follow(
    client: httpx.AsyncClient, replica: Replica, user: str, conversation: str, turn: str, after: int
) -> list[dict[str, Any]]:
    """The turn's events after ``after``, up to its error event, from ``replica`` (GET .../events, Last-Event-ID)."""
    url = f"{replica.url}/api/{user}/conversations/{conversation}/turns/{turn}/events"
    async with client.stream("GET", url, headers={**auth(user), **SSE, "Last-Event-ID": str(after)}) as response:
        assert response.status_code == 200
        return [event async for event in read_events(response, until="error")]


async def messages_of(
    client: httpx.AsyncClient, replica: Replica, user: str, conversation: str
) -> list[dict[str, Any]]:
    response = await client.get(f"{replica.url}/api/{user}/conversations/{conversation}/messages", headers=auth(user))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def turn_row(engine: AsyncEngine, turn: str) -> tuple[str, str | None]:
    """The turn's status and the type of its last event."""
    async with engine.connect() as connection:
        status = await connection.scalar(select(turns.c.status).where(turns.c.id == uuid.UUID(turn)))
        last = await connection.scalar(
            select(turn_events.c.type)
            .where(turn_events.c.turn_id == uuid.UUID(turn))
            .order_by(turn_events.c.seq.desc())
            .limit(1)
        )
    return str(status), last


async def test_a_follower_of_a_turn_whose_replica_was_killed_ends_with_the_error_event_within_seconds(
    replicas: dict[str, Replica], victim: Replica, pg_engine: AsyncEngine
) -> None:
    a = replicas["a"]
    user = new_user()
    async with asyncio.timeout(BOUND * 2), httpx.AsyncClient(timeout=BOUND) as client:
        conversation, turn = await killed_mid_stream(client, victim, user)

        async with asyncio.timeout(BOUND):  # a follower left waiting would wait 300 s
            followed = await follow(client, a, user, conversation, turn, after=1)
        assert followed[-1]["event"] == "error"
        assert followed[-1]["data"]["detail"] == DEAD
        assert followed[-1]["data"]["conversation_id"] == conversation
        assert [e["id"] for e in followed] == list(range(2, 2 + len(followed))), "the log, numbered without gaps"
        assert {e["event"] for e in followed[:-1]} <= {"delta"}

        async with asyncio.timeout(BOUND):  # a Last-Event-ID resume after the end replays the rest and ends at once
            again = await follow(client, a, user, conversation, turn, after=followed[-2]["id"])
        assert [e["event"] for e in again] == ["error"]
        assert await turn_row(pg_engine, turn) == ("interrupted", "error")

        stored = await messages_of(client, a, user, conversation)
        assert [(m["role"], m["content"], m["status"]) for m in stored] == [("user", LONG_MESSAGE, "unanswered")]
        detail = (await client.get(f"{a.url}/api/{user}/conversations/{conversation}", headers=auth(user))).json()
        assert detail["id"] == conversation

        after = await client.post(
            a.chat_url(user),
            json={"message": "add a task to buy milk", "conversation_id": conversation},
            headers=auth(user),
        )
        assert after.status_code == 200, after.text
        assert after.json()["tool_calls"][0]["name"] == "add_task"


async def test_the_janitor_closes_a_dead_streamed_turn_nobody_touches(
    replicas: dict[str, Replica], victim: Replica, pg_engine: AsyncEngine
) -> None:
    a = replicas["a"]
    user = new_user()
    async with asyncio.timeout(BOUND * 2), httpx.AsyncClient(timeout=BOUND) as client:
        conversation, turn = await killed_mid_stream(client, victim, user)
        assert (await turn_row(pg_engine, turn))[0] == "running"

        async with asyncio.timeout(BOUND):
            while await turn_row(pg_engine, turn) != ("interrupted", "error"):  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.2)

        stored = await messages_of(client, a, user, conversation)
        assert [(m["role"], m["status"]) for m in stored] == [("user", "unanswered")]
        async with asyncio.timeout(BOUND):
            followed = await follow(client, a, user, conversation, turn, after=0)
        assert followed[0]["event"] == "turn"
        assert followed[-1]["data"]["detail"] == DEAD
