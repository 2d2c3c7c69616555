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
from .test_exactly_once import Replica, launch, replica_env, serving, stop, wait_until_serving
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
    with serving(f"victim-{uuid.uuid4().hex[:6]}", offline_env(postgres_url), directory) as replica:
        yield replica


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


# --- a busy conversation: if_busy ---------------------------------------------------------------------------------


async def streaming_on(
    client: httpx.AsyncClient, replica: Replica, user: str
) -> tuple[str, asyncio.Task[list[dict[str, Any]]], asyncio.Event]:
    """A long streamed turn running on ``replica``: (conversation id, the task reading all its events, streaming)."""
    streaming = asyncio.Event()
    conversation: list[str] = []

    async def read() -> list[dict[str, Any]]:
        async with client.stream(
            "POST", replica.chat_url(user), json={"message": LONG_MESSAGE}, headers={**auth(user), **SSE}
        ) as response:
            assert response.status_code == 200
            seen = []
            async for event in read_events(response, until="done"):
                seen.append(event)
                if event["event"] == "turn":
                    conversation.append(event["data"]["conversation_id"])
                if event["event"] == "delta":
                    streaming.set()
            return seen

    task = asyncio.create_task(read())
    await asyncio.wait({task, asyncio.create_task(streaming.wait())}, return_when=asyncio.FIRST_COMPLETED)
    assert streaming.is_set(), task.result() if task.done() else "not streaming"
    return conversation[0], task, streaming


async def test_reject_is_409_at_once_with_retry_after_json_and_sse_and_stores_nothing(
    replicas: dict[str, Replica],
) -> None:
    a, b = replicas["a"], replicas["janitor"]
    user = new_user()
    async with asyncio.timeout(BOUND * 2), httpx.AsyncClient(timeout=BOUND) as client:
        conversation, first, _ = await streaming_on(client, b, user)
        body = {"message": "hello?", "conversation_id": conversation, "if_busy": "reject"}
        refused = await client.post(a.chat_url(user), json=body, headers=auth(user))
        refused_sse = await client.post(a.chat_url(user), json=body, headers={**auth(user), **SSE})
        stored = await messages_of(client, a, user, conversation)
        stopped = await client.post(f"{a.url}/api/{user}/conversations/{conversation}/stop", headers=auth(user))
        assert stopped.status_code == 202, stopped.text
        await first

    for response in (refused, refused_sse):
        assert response.status_code == 409, response.text
        assert int(response.headers["retry-after"]) > 0
        assert "reject" in response.json()["detail"]
    assert [m["content"] for m in stored if m["role"] == "user"] == [LONG_MESSAGE], "nothing stored"


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
async def test_interrupt_stops_the_turn_running_on_the_other_replica_and_runs_right_after_it(
    replicas: dict[str, Replica], streamed: bool
) -> None:
    a, b = replicas["a"], replicas["janitor"]
    user = new_user()
    async with asyncio.timeout(BOUND * 2), httpx.AsyncClient(timeout=BOUND) as client:
        conversation, first, _ = await streaming_on(client, b, user)
        body = {"message": "add a task to buy milk", "conversation_id": conversation, "if_busy": "interrupt"}
        if streamed:
            async with client.stream("POST", a.chat_url(user), json=body, headers={**auth(user), **SSE}) as response:
                assert response.status_code == 200
                events = [event async for event in read_events(response, until="done")]
            reply = events[-1]["data"]
            assert events[-1]["event"] == "done", events[-1]
        else:
            response = await client.post(a.chat_url(user), json=body, headers=auth(user))
            assert response.status_code == 200, response.text
            reply = response.json()
        interrupted = (await first)[-1]
        stored = await messages_of(client, a, user, conversation)

    assert interrupted["event"] == "done"
    assert (interrupted["data"]["interrupted"], interrupted["data"]["status"]) == (True, "interrupted")
    assert reply["status"] == "complete"
    assert reply["tool_calls"][0]["name"] == "add_task"
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),  # the add_task call, its result folded in
        ("assistant", "complete"),
    ]
    assert stored[1]["content"] == interrupted["data"]["response"], "the partial reply is kept"


@pytest.mark.parametrize("value", ["later", "", "WAIT", 1, None])
async def test_an_unknown_if_busy_is_400_with_a_detail(replicas: dict[str, Replica], value: Any) -> None:
    a = replicas["a"]
    user = new_user()
    async with httpx.AsyncClient(timeout=BOUND) as client:
        for headers in (auth(user), {**auth(user), **SSE}):
            response = await client.post(a.chat_url(user), json={"message": "hi", "if_busy": value}, headers=headers)
            if value is None:  # null is the default
                assert response.status_code == 200, response.text
                continue
            assert response.status_code == 400, response.text
            assert "if_busy" in response.json()["detail"] or "if_busy" in str(response.json().get("extra"))


def test_an_unknown_chatcore_busy_policy_stops_chatcore_serve_at_start_up(postgres_url: str, directory: Path) -> None:
    replica = launch("bad-policy", offline_env(postgres_url, CHATCORE_BUSY_POLICY="sometimes"), directory)
    try:
        assert replica.process.wait(timeout=60) != 0
    finally:
        stop(replica)
    assert "CHATCORE_BUSY_POLICY must be one of wait, reject, interrupt" in replica.log()


def ai_sdk_body(chat_id: str, text: str, **extra: Any) -> dict[str, Any]:
    message = {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", **extra}


async def test_the_frontend_protocols_take_if_busy_and_ignore_fields_they_do_not_know(
    replicas: dict[str, Replica],
) -> None:
    a, b = replicas["a"], replicas["janitor"]
    user, chat_id = new_user(), f"chat-{uuid.uuid4().hex[:8]}"
    ai_sdk = f"/api/{user}/ai-sdk/chat"
    async with (
        asyncio.timeout(BOUND * 2),
        httpx.AsyncClient(timeout=BOUND) as client,
        client.stream(
            "POST", b.url + ai_sdk, json=ai_sdk_body(chat_id, LONG_MESSAGE, unknownField=1), headers=auth(user)
        ) as running,
    ):
        assert running.status_code == 200
        async for line in running.aiter_lines():
            if "text-delta" in line:
                break
        refused = await client.post(
            a.url + ai_sdk, json=ai_sdk_body(chat_id, "hello?", if_busy="reject"), headers=auth(user)
        )
        bad = await client.post(a.url + ai_sdk, json=ai_sdk_body(chat_id, "hello?", if_busy="soon"), headers=auth(user))
        run = {
            "threadId": chat_id,
            "runId": "run-1",
            "messages": [{"id": "m1", "role": "user", "content": "hello?"}],
            "forwardedProps": {"if_busy": "reject"},
            "tools": [],
            "context": [],
            "state": {},
            "somethingNew": True,
        }
        refused_ag_ui = await client.post(f"{a.url}/api/{user}/ag-ui", json=run, headers=auth(user))
    assert refused.status_code == 409, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert refused_ag_ui.status_code == 409, refused_ag_ui.text
    assert bad.status_code == 400
    assert "if_busy must be one of wait, reject, interrupt" in bad.json()["detail"]
