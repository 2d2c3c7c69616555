"""Approvals exactly once, on real ``chatcore serve`` processes sharing one PostgreSQL database.

Three replicas run the offline agent with CHATCORE_APPROVAL_TOOLS=delete_task. The same approval is sent
to two of them at once; and a replica is killed with SIGKILL after it stored the decision but before the
approved call ran (held there by a row lock the test takes on the conversation, which the turn going on
needs for the conversation's lease), and the client retries on another replica. The processes are the
ones ``test_exactly_once.py`` starts, with its helpers.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import messages
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore

from .conftest import auth
from .test_exactly_once import (
    WAIT,
    Replica,
    launch,
    replica_env,
    stop,
    stored,
    wait_until_serving,
    whole_turns,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    directory = tmp_path_factory.mktemp("approval-replicas")
    offline = {"CHATCORE_LLM": "offline", "CHATCORE_APPROVAL_TOOLS": "delete_task"}
    started = {
        name: launch(name, replica_env(postgres_url, "http://127.0.0.1:9", **offline), directory)
        for name in ("a", "b", "victim")
    }
    try:
        wait_until_serving(list(started.values()))
        yield started
    finally:
        for replica in started.values():
            stop(replica)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def chat(
    client: httpx.AsyncClient, replica: Replica, user: str, message: str, conversation: str | None = None
) -> Any:
    body: dict[str, Any] = {"message": message}
    if conversation is not None:
        body["conversation_id"] = conversation
    response = await client.post(replica.chat_url(user), json=body, headers=auth(user))
    assert response.status_code == 200, response.text
    return response.json()


async def approve(
    client: httpx.AsyncClient, replica: Replica, user: str, conversation: str, call_id: str
) -> httpx.Response:
    return await client.post(
        f"{replica.url}/api/{user}/conversations/{conversation}/approvals",
        json={"decisions": [{"tool_call_id": call_id, "approved": True}]},
        headers=auth(user),
    )


async def waiting_delete(client: httpx.AsyncClient, replica: Replica, user: str) -> tuple[str, str]:
    """'Team meeting' added, then "Delete the meeting task": the conversation and the delete_task call waiting."""
    conversation = (await chat(client, replica, user, "Add a task called Team meeting"))["conversation_id"]
    asked = await chat(client, replica, user, "Delete the meeting task", conversation)
    assert asked["status"] == "awaiting_approval", asked
    [pending] = asked["pending_approvals"]
    return conversation, pending["id"]


DECIDED = "SELECT approved IS TRUE FROM tool_approvals WHERE tool_call_id = :call"
WAITING_FOR_THE_LEASE = (
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
    "AND query LIKE 'UPDATE conversations SET%'"
)


async def until(engine: AsyncEngine, query: str, parameters: dict[str, Any], what: str) -> None:
    """Poll ``query`` (one boolean) until it is true, at most WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                async with engine.connect() as connection:
                    if await connection.scalar(text(query), parameters):
                        return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def results_of(engine: AsyncEngine, call_id: str) -> int:
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(func.count()).select_from(messages).where(messages.c.tool_call_id == call_id)
        )
    return int(found or 0)


async def test_the_same_approval_sent_to_two_replicas_at_once_deletes_once_and_both_replies_are_equal(
    replicas: dict[str, Replica], pg_engine: AsyncEngine
) -> None:
    a, b = replicas["a"], replicas["b"]
    user = new_user()
    async with asyncio.timeout(90), httpx.AsyncClient(timeout=WAIT * 2) as client:
        conversation, call_id = await waiting_delete(client, a, user)
        first, second = await asyncio.gather(
            approve(client, a, user, conversation, call_id), approve(client, b, user, conversation, call_id)
        )

    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert first.json() == second.json()
    reply = first.json()
    assert reply["status"] == "complete"
    assert reply["response"].startswith("I've deleted 'Team meeting'")
    assert await SqlAlchemyTaskStore(pg_engine).list(user) == []
    assert await results_of(pg_engine, call_id) == 1, "the delete ran once"
    turns = whole_turns(await stored(pg_engine, conversation))
    assert len(turns) == 2
    assert str(turns[-1][-1]["id"]) == reply["message_id"]
    assert [m["role"] for m in turns[-1]].count("assistant") == 3, "list_tasks, delete_task, the answer: once each"


async def test_a_replica_killed_between_the_approval_and_the_run_leaves_the_run_to_the_retry(
    replicas: dict[str, Replica], pg_engine: AsyncEngine
) -> None:
    victim, b = replicas["victim"], replicas["b"]
    user = new_user()
    async with asyncio.timeout(120), httpx.AsyncClient(timeout=WAIT * 2) as client:
        conversation, call_id = await waiting_delete(client, b, user)
        async with pg_engine.connect() as locker:
            # The decision is stored without the conversation's lease; going on needs the lease, so it waits here.
            await locker.execute(
                text("SELECT id FROM conversations WHERE id = :id FOR UPDATE"), {"id": uuid.UUID(conversation)}
            )
            in_flight = asyncio.create_task(approve(client, victim, user, conversation, call_id))
            await until(pg_engine, DECIDED, {"call": call_id}, "the victim to store the decision")
            await until(pg_engine, WAITING_FOR_THE_LEASE, {}, "the victim to wait for the conversation's row")
            victim.process.send_signal(signal.SIGKILL)
            assert victim.process.wait(timeout=10) == -signal.SIGKILL
            with pytest.raises(httpx.TransportError):
                await in_flight
            assert await SqlAlchemyTaskStore(pg_engine).list(user) != [], "the call had not run"
            await locker.rollback()

        retried = await approve(client, b, user, conversation, call_id)

    assert retried.status_code == 200, retried.text
    reply = retried.json()
    assert reply["status"] == "complete"
    assert reply["response"].startswith("I've deleted 'Team meeting'")
    assert reply["tool_calls"][-1]["result"]["status"] == "deleted"
    assert await SqlAlchemyTaskStore(pg_engine).list(user) == []
    assert await results_of(pg_engine, call_id) == 1
    turns = whole_turns(await stored(pg_engine, conversation))
    assert [m["role"] for m in turns[-1]].count("assistant") == 3, "the turn went on once"
    assert str(turns[-1][-1]["id"]) == reply["message_id"]
