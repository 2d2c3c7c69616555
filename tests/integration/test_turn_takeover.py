"""Tool results kept as they happen, proven on real ``chatcore serve`` processes killed with SIGKILL.

A replica runs a keyed turn against the fake model provider (OpenAI's or Anthropic's wire format) and is killed:
once after its tool call finished (while the model was answering), once while the call was running (held by a
lock the test takes on the ``tasks`` table). The client retries with the same Idempotency-Key on another replica,
which goes on with the same turn: the finished call is not run again, the running one is sent to the model as
``interrupted: it may or may not have run`` (the fake provider refuses a call without its result), and each tool
side effect happens at most once per call id.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import conversations, messages
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.history import INTERRUPTED_ERROR

from ..fake_providers import FakeProviderServer
from .test_exactly_once import (
    WAIT,
    Replica,
    chat,
    ok,
    replica_env,
    serving,
    stored,
    wait_for,
    whole_turns,
)

pytestmark = pytest.mark.integration

ANTHROPIC_KEY = "sk-ant-test-takeover-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(slow_seconds=60.0) as server:
        yield server


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("takeover")


def env_for(llm: str, postgres_url: str, provider: FakeProviderServer) -> dict[str, str]:
    extra = {"CHATCORE_LLM_MAX_RETRIES": "0", "CHATCORE_LLM_TIMEOUT": "60", "CHATCORE_JANITOR": "false"}
    if llm == "anthropic":
        extra.update(CHATCORE_LLM="anthropic", ANTHROPIC_BASE_URL=provider.url, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
    return replica_env(postgres_url, provider.url, **extra)


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def llm(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def survivor(llm: str, postgres_url: str, provider: FakeProviderServer, directory: Path) -> Iterator[Replica]:
    with serving(f"survivor-{llm}", env_for(llm, postgres_url, provider), directory) as replica:
        yield replica


@pytest.fixture
def victim(llm: str, postgres_url: str, provider: FakeProviderServer, directory: Path) -> Iterator[Replica]:
    name = f"victim-{llm}-{uuid.uuid4().hex[:6]}"
    with serving(name, env_for(llm, postgres_url, provider), directory) as replica:
        yield replica


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def rows_of(engine: AsyncEngine, user: str) -> list[Any]:
    """The user's stored messages, every conversation, in order."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(messages)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(conversations.c.user_id == user)
            .order_by(messages.c.seq)
        )
        return [row._mapping for row in result]


async def titles(engine: AsyncEngine, user: str) -> list[str]:
    return [task.title for task in await SqlAlchemyTaskStore(engine).list(user)]


def kill(victim: Replica) -> None:
    victim.process.send_signal(signal.SIGKILL)
    assert victim.process.wait(timeout=10) == -signal.SIGKILL


async def stored_soon(engine: AsyncEngine, user: str, role: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not any(row["role"] == role for row in await rows_of(engine, user)):
        assert asyncio.get_running_loop().time() < deadline, f"no {role} message stored"
        await asyncio.sleep(0.05)


async def test_a_call_that_finished_before_the_kill_is_not_run_again_by_the_keyed_retry(
    llm: str, victim: Replica, survivor: Replica, provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    user, key = new_user(), f"takeover-{uuid.uuid4()}"
    provider.reset()
    async with asyncio.timeout(WAIT * 3), httpx.AsyncClient(timeout=WAIT * 2) as client:
        async with pg_engine.connect() as lock:
            await lock.execute(text("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE"))  # add_task waits for it
            in_flight = asyncio.create_task(chat(client, victim, user, "Add a task to buy milk", key=key))
            await stored_soon(pg_engine, user, "assistant")  # the call is stored, and runs
            provider.fail_next("slow")  # the model's next step, after the result, never comes back
            await lock.rollback()
        await wait_for(lambda: len(provider.requests) == 2, "the model's step after the result")
        await stored_soon(pg_engine, user, "tool")
        kill(victim)
        with pytest.raises(httpx.TransportError):
            await in_flight
        provider.reset()

        reply = ok(await chat(client, survivor, user, "Add a task to buy milk", key=key))
        again = ok(await chat(client, survivor, user, "Add a task to buy milk", key=key))

    assert await titles(pg_engine, user) == ["Buy milk"], "the finished call ran once"
    assert reply == again
    assert reply["status"] == "complete"
    [call] = reply["tool_calls"]
    assert (call["name"], call["arguments"], call.get("error")) == ("add_task", {"title": "Buy milk"}, None)
    assert len(provider.requests) == 1, "the retry asked the model once, with the stored result"
    [turn] = whole_turns(await stored(pg_engine, reply["conversation_id"]))
    assert [row["role"] for row in turn] == ["user", "assistant", "tool", "assistant"]
    assert str(turn[-1]["id"]) == reply["message_id"]


async def test_a_call_running_when_the_replica_died_is_interrupted_never_run_again_and_the_model_is_told(
    llm: str, victim: Replica, survivor: Replica, provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    user, key = new_user(), f"takeover-{uuid.uuid4()}"
    provider.reset()
    async with asyncio.timeout(WAIT * 3), httpx.AsyncClient(timeout=WAIT * 2) as client:
        async with pg_engine.connect() as lock:
            await lock.execute(text("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE"))
            in_flight = asyncio.create_task(chat(client, victim, user, "Add a task to buy eggs", key=key))
            await stored_soon(pg_engine, user, "assistant")
            await asyncio.sleep(0.3)  # add_task is waiting for the lock
            kill(victim)
            with pytest.raises(httpx.TransportError):
                await in_flight
            await lock.rollback()
        provider.reset()

        reply = ok(await chat(client, survivor, user, "Add a task to buy eggs", key=key))
        after = ok(await chat(client, survivor, user, "Add a task to buy jam", reply["conversation_id"]))

    assert len(await titles(pg_engine, user)) <= 2, "each call's side effect at most once"
    assert (await titles(pg_engine, user)).count("Buy eggs") <= 1
    assert "Buy jam" in await titles(pg_engine, user)
    [call] = reply["tool_calls"]
    assert (call["name"], call["error"]) == ("add_task", INTERRUPTED_ERROR)
    assert reply["status"] == "complete"
    assert after["status"] == "complete"
    told = json.dumps(provider.bodies(llm)[0])
    assert INTERRUPTED_ERROR in told, "the model is told the call may or may not have run"
    turns = whole_turns(await stored(pg_engine, reply["conversation_id"]))
    assert [[row["role"] for row in turn] for turn in turns] == [
        ["user", "assistant", "tool", "assistant"],
        ["user", "assistant", "tool", "assistant"],
    ]
    assert INTERRUPTED_ERROR in turns[0][2]["content"], "stored paired, interrupted"
