"""Turns that happen exactly once, on real ``chatcore serve`` processes sharing one PostgreSQL database.

Two replicas (``a`` and ``b``) take concurrent turns on one conversation and on many; a request is
retried concurrently with one Idempotency-Key; a replica is killed with SIGKILL during a model call
and another one carries on; a fault-injecting TCP proxy cuts the database away from a replica under
load and gives it back; a replica gets SIGTERM with a turn in flight; the model provider fails, times
out and rate-limits. The model is ``FakeProviderServer``, a local OpenAI-compatible server that
answers in milliseconds unless told to be slow. Every test is bounded in time, and afterwards every
conversation it touched is checked row by row: sequence numbers without gaps, each turn's messages
together, every tool call with its result.

A few in-process tests (``app_client``) cover the HTTP statuses that need precise timing: 400 for a
malformed key, 409 while a conversation or a key is busy, 422 for a key reused with another body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import conversations, messages
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse

from ..fake_providers import FakeProviderServer
from .conftest import SECRET, AppClient, auth
from .faulty_proxy import FaultyTcpProxy

pytestmark = pytest.mark.integration

CHATCORE = shutil.which("chatcore", path=str(Path(sys.executable).parent)) or "chatcore"
SETPRIV = shutil.which("setpriv")
"""util-linux: ``--pdeathsig TERM`` stops a replica when the test run itself is killed, instead of leaving it behind."""
START_TIMEOUT_SECONDS = 90.0
"""Five processes import the app at once on a small machine: a few seconds each, sharing the CPUs."""
LEASE_SECONDS = 2
"""Short, so a killed replica's conversation is free again within the test."""
LLM_TIMEOUT_SECONDS = 3
WAIT = 30.0
"""The most a single step of a test waits for something to happen."""


# --- the replicas -------------------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def chat_url(self, user: str) -> str:
        return f"{self.url}/api/{user}/chat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica_env(database_url: str, provider_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BETTER_AUTH_", "CHATCORE_", "OPENAI_", "ANTHROPIC_", "DATABASE_URL"))
    }
    env.update(
        DATABASE_URL=database_url,
        BETTER_AUTH_SECRET=SECRET,
        CHATCORE_LLM="openai",
        OPENAI_BASE_URL=f"{provider_url}/v1",
        OPENAI_API_KEY="sk-test-exactly-once",
        CHATCORE_LLM_MAX_RETRIES="2",
        CHATCORE_LLM_TIMEOUT=str(LLM_TIMEOUT_SECONDS),
        CHATCORE_LEASE_SECONDS=str(LEASE_SECONDS),
        CHATCORE_TURN_WAIT_SECONDS=str(WAIT),
        CHATCORE_HISTORY_LIMIT="500",
        # Small pools: five replicas must fit in PostgreSQL's default 100 connections beside the other tests.
        CHATCORE_DB_POOL_SIZE="4",
        CHATCORE_DB_MAX_OVERFLOW="4",
        CHATCORE_DB_POOL_TIMEOUT="10",
        CHATCORE_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def launch(name: str, env: dict[str, str], directory: Path) -> Replica:
    port = free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        orphan_guard = [SETPRIV, "--pdeathsig", "TERM"] if SETPRIV else []
        process = subprocess.Popen(
            [*orphan_guard, CHATCORE, "serve", "--no-migrate", "--port", str(port)],
            env=env,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, f"http://127.0.0.1:{port}", process, log_path)


def wait_until_serving(replicas: Sequence[Replica]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    for replica in replicas:
        while True:
            if replica.process.poll() is not None:
                pytest.fail(f"replica {replica.name} exited:\n{replica.log()}")
            try:
                if httpx.get(f"{replica.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"replica {replica.name} did not start:\n{replica.log()}")
            time.sleep(0.1)


@contextlib.contextmanager
def serving(name: str, env: dict[str, str], directory: Path) -> Iterator[Replica]:
    """One replica launched and serving while inside, stopped after."""
    replica = launch(name, env, directory)
    try:
        wait_until_serving([replica])
        yield replica
    finally:
        stop(replica)


def stop(replica: Replica) -> None:
    if replica.process.poll() is None:
        replica.process.terminate()
        try:
            replica.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait(timeout=10)


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(postgres_url: str) -> Iterator[FaultyTcpProxy]:
    url = make_url(postgres_url)
    with FaultyTcpProxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


@pytest.fixture(scope="module")
def replicas(
    postgres_url: str, provider: FakeProviderServer, proxy: FaultyTcpProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Replica]]:
    """``a`` and ``b`` share the work; ``victim`` meets failing models and is killed, ``sigterm`` is terminated,
    ``proxied`` is cut off from the database.

    The SDKs retry as in production (a keep-alive connection the fake closed a moment ago is retried, not a 502),
    except on ``victim``, where each provider failure must reach the client as it happened.
    """
    directory = tmp_path_factory.mktemp("replicas")
    through_proxy = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    envs = {
        "a": replica_env(postgres_url, provider.url),
        "b": replica_env(postgres_url, provider.url),
        "victim": replica_env(postgres_url, provider.url, CHATCORE_LLM_MAX_RETRIES="0"),
        "sigterm": replica_env(postgres_url, provider.url, CHATCORE_LLM_TIMEOUT="20", CHATCORE_SHUTDOWN_GRACE="15"),
        "proxied": replica_env(through_proxy, provider.url),
    }
    started = {name: launch(name, env, directory) for name, env in envs.items()}
    try:
        wait_until_serving(list(started.values()))
        yield started
    finally:
        for replica in started.values():
            stop(replica)


# --- talking to them, and reading what they stored ----------------------------------------------------------------


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def chat(
    client: httpx.AsyncClient,
    replica: Replica,
    user: str,
    message: str,
    conversation_id: str | None = None,
    *,
    key: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    headers = auth(user)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(replica.chat_url(user), json=body, headers=headers)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def stored(engine: AsyncEngine, conversation_id: str | uuid.UUID) -> list[RowMapping]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(messages)
            .where(messages.c.conversation_id == uuid.UUID(str(conversation_id)))
            .order_by(messages.c.seq)
        )
        return [row._mapping for row in rows]


async def conversations_of(engine: AsyncEngine, users: Sequence[str]) -> list[RowMapping]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(conversations).where(conversations.c.user_id.in_(users)))
        return [row._mapping for row in rows]


def whole_turns(rows: Sequence[RowMapping]) -> list[list[RowMapping]]:
    """The conversation's turns, after checking it is whole: no gaps, no interleaving, no half-written turn."""
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "seqs have gaps or repeats"
    assert len({r["id"] for r in rows}) == len(rows)
    turns: list[list[RowMapping]] = []
    seen: set[uuid.UUID] = set()
    for row in rows:
        if turns and turns[-1][0]["turn_id"] == row["turn_id"]:
            turns[-1].append(row)
            continue
        assert row["turn_id"] not in seen, f"turn {row['turn_id']} is interleaved with another turn"
        seen.add(row["turn_id"])
        turns.append([row])
    for turn in turns:
        assert turn[0]["role"] == "user", "a turn starts with its user message"
        assert all(m["role"] != "user" for m in turn[1:]), "one user message per turn"
        calls = sorted(c["id"] for m in turn if m["role"] == "assistant" for c in m["tool_calls"] or [])
        results = sorted(m["tool_call_id"] for m in turn if m["role"] == "tool")
        assert len(results) == len(set(results)), "no tool call has two results"
        assert set(results) <= set(calls), "every result has its call"
        # A turn cut short (a kill, the database gone) stored each step as it happened: the calls that were running
        # have no result, and history sends them to a model as "interrupted: it may or may not have run".
        if turn[-1]["role"] == "assistant" and not turn[-1]["tool_calls"]:
            assert calls == results, "an answered turn has every tool call's result"
    return turns


def user_texts(body: Mapping[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


async def wait_for(condition: Any, what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- one turn at a time per conversation, across replicas ---------------------------------------------------------


async def test_twenty_concurrent_turns_on_one_conversation_run_one_after_another_across_two_replicas(
    replicas: dict[str, Replica], provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    a, b = replicas["a"], replicas["b"]
    user = new_user()
    texts = [f"Add a task to buy item {i}" if i % 2 == 0 else f"hello number {i}" for i in range(20)]
    provider.reset()

    async with asyncio.timeout(60), httpx.AsyncClient(timeout=WAIT * 2) as client:
        conversation_id = ok(await chat(client, a, user, "hello, let us start"))["conversation_id"]
        responses = await asyncio.gather(
            *(chat(client, (a, b)[i % 2], user, text, conversation_id) for i, text in enumerate(texts))
        )

    replies = [ok(response) for response in responses]
    turns = whole_turns(await stored(pg_engine, conversation_id))
    assert len(turns) == 21
    asked = [turn[0]["content"] for turn in turns]
    assert sorted(asked[1:]) == sorted(texts), "every turn stored exactly once"
    assert {str(turn[-1]["id"]) for turn in turns[1:]} == {reply["message_id"] for reply in replies}
    bodies = provider.bodies("openai")
    assert len(bodies) == 1 + 20 + 10  # one model call per turn, two for each turn that adds a task
    for body in bodies:
        seen = user_texts(body)
        assert seen == asked[: asked.index(seen[-1]) + 1], "each turn saw every turn before it, in order"


async def test_fifty_users_taking_five_turns_each_over_two_replicas_store_every_message_once(
    replicas: dict[str, Replica], pg_engine: AsyncEngine
) -> None:
    a, b = replicas["a"], replicas["b"]
    users = [new_user() for _ in range(50)]

    async def session(client: httpx.AsyncClient, index: int, user: str) -> tuple[str, list[str], list[dict[str, Any]]]:
        conversation_id = None
        texts, replies = [], []
        for turn in range(5):
            text = f"Add a task to buy thing {index}-{turn}" if turn in (0, 3) else f"hello {index}-{turn}"
            reply = ok(await chat(client, (a, b)[(index + turn) % 2], user, text, conversation_id))
            conversation_id = reply["conversation_id"]
            texts.append(text)
            replies.append(reply)
        assert conversation_id is not None
        return conversation_id, texts, replies

    async with asyncio.timeout(90), httpx.AsyncClient(timeout=WAIT * 2) as client:
        sessions = await asyncio.gather(*(session(client, i, user) for i, user in enumerate(users)))

    assert len(await conversations_of(pg_engine, users)) == 50
    tasks = SqlAlchemyTaskStore(pg_engine)
    for user, (conversation_id, texts, replies) in zip(users, sessions, strict=True):
        turns = whole_turns(await stored(pg_engine, conversation_id))
        assert [turn[0]["content"] for turn in turns] == texts
        assert [str(turn[-1]["id"]) for turn in turns] == [reply["message_id"] for reply in replies]
        assert len(await tasks.list(user)) == 2


# --- idempotent retries -------------------------------------------------------------------------------------------


async def test_five_concurrent_retries_with_one_key_run_the_turn_once(
    replicas: dict[str, Replica], provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    a, b = replicas["a"], replicas["b"]
    user = new_user()
    key = f"retry-{uuid.uuid4()}"
    provider.reset()

    async with asyncio.timeout(60), httpx.AsyncClient(timeout=WAIT * 2) as client:
        responses = await asyncio.gather(
            *(chat(client, (a, b)[i % 2], user, "Add a task to buy milk", key=key) for i in range(5))
        )
        replies = [ok(response) for response in responses]
        later = ok(await chat(client, b, user, "Add a task to buy milk", key=key))
        reused = await chat(client, a, user, "Add a task to buy bread", key=key)
        someone_else = ok(await chat(client, a, new_user(), "Add a task to buy milk", key=key))

    assert all(reply == replies[0] for reply in [*replies, later])
    assert [response.content for response in responses] == [responses[0].content] * 5, "byte-identical"
    assert replies[0]["tool_calls"][0]["name"] == "add_task"
    assert [task.title for task in await SqlAlchemyTaskStore(pg_engine).list(user)] == ["Buy milk"]
    assert len(provider.bodies("openai")) == 2 + 2, "one turn for the user, one for someone else"
    [turn] = whole_turns(await stored(pg_engine, replies[0]["conversation_id"]))
    assert str(turn[-1]["id"]) == replies[0]["message_id"]
    assert reused.status_code == 422
    assert someone_else["conversation_id"] != replies[0]["conversation_id"], "keys are per user"


# --- failures -----------------------------------------------------------------------------------------------------


async def test_a_failing_slow_or_rate_limiting_model_leaves_the_conversation_able_to_continue(
    replicas: dict[str, Replica], provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    victim = replicas["victim"]
    user = new_user()

    async with asyncio.timeout(60), httpx.AsyncClient(timeout=WAIT) as client:
        conversation_id = ok(await chat(client, victim, user, "hello"))["conversation_id"]
        outcomes = []
        for failure in ("server_error", "rate_limit", "slow"):
            provider.fail_next(failure)
            outcomes.append(await chat(client, victim, user, f"Add a task to buy {failure}", conversation_id))
        provider.reset()
        after = ok(await chat(client, victim, user, "Add a task to buy jam", conversation_id))

    assert [o.status_code for o in outcomes] == [502, 503, 504]
    assert all(o.json()["conversation_id"] == conversation_id for o in outcomes)
    assert int(outcomes[1].headers["retry-after"]) > 0
    turns = whole_turns(await stored(pg_engine, conversation_id))
    assert [(t[0]["content"], t[0]["status"], len(t)) for t in turns] == [
        ("hello", "complete", 2),
        ("Add a task to buy server_error", "unanswered", 1),
        ("Add a task to buy rate_limit", "unanswered", 1),
        ("Add a task to buy slow", "unanswered", 1),
        ("Add a task to buy jam", "complete", 4),
    ]
    assert after["tool_calls"][0]["arguments"] == {"title": "Buy jam"}
    first_request = provider.bodies("openai")[0]
    assert user_texts(first_request)[-4:] == [t[0]["content"] for t in turns[1:]], "the failed turns stay in history"


async def test_a_replica_killed_mid_turn_leaves_a_whole_conversation_that_continues_elsewhere(
    replicas: dict[str, Replica], provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    victim, b = replicas["victim"], replicas["b"]
    user = new_user()

    async with asyncio.timeout(60), httpx.AsyncClient(timeout=WAIT) as client:
        conversation_id = ok(await chat(client, b, user, "hello"))["conversation_id"]
        provider.reset()
        provider.fail_next("slow")
        in_flight = asyncio.create_task(chat(client, victim, user, "Add a task to buy eggs", conversation_id))
        await wait_for(lambda: len(provider.requests) == 1, "the victim's model call")
        victim.process.send_signal(signal.SIGKILL)
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(httpx.TransportError):
            await in_flight

        rows = await stored(pg_engine, conversation_id)
        assert [(r["role"], r["content"]) for r in rows][-1] == ("user", "Add a task to buy eggs")
        async with pg_engine.connect() as connection:
            holder = await connection.scalar(
                select(conversations.c.lease_owner).where(conversations.c.id == uuid.UUID(conversation_id))
            )
        assert holder == str(rows[-1]["turn_id"]), "the dead turn still holds the conversation, until its lease expires"

        after = ok(await chat(client, b, user, "Add a task to buy bread", conversation_id))

    turns = whole_turns(await stored(pg_engine, conversation_id))
    assert [(t[0]["content"], len(t)) for t in turns] == [
        ("hello", 2),
        ("Add a task to buy eggs", 1),
        ("Add a task to buy bread", 4),
    ]
    assert str(turns[-1][-1]["id"]) == after["message_id"]
    assert "Add a task to buy eggs" in user_texts(provider.bodies("openai")[-1])


async def test_a_database_outage_gives_503_and_the_same_process_recovers_without_losing_a_message(
    replicas: dict[str, Replica], proxy: FaultyTcpProxy, pg_engine: AsyncEngine
) -> None:
    proxied = replicas["proxied"]
    pid = proxied.process.pid
    users = [new_user() for _ in range(4)]
    results: list[tuple[str, str, httpx.Response]] = []
    stopping = asyncio.Event()

    async def keep_chatting(client: httpx.AsyncClient, user: str) -> None:
        for i in range(10_000):
            if stopping.is_set():
                return
            text = f"Add a task to buy {user}-{i}" if i % 2 else f"hello {user}-{i}"
            response = await chat(client, proxied, user, text)
            results.append((user, text, response))
            if response.status_code != 200:
                await asyncio.sleep(0.05)

    def count(status: int, since: int = 0) -> int:
        return sum(1 for _, _, response in results[since:] if response.status_code == status)

    async with asyncio.timeout(90), httpx.AsyncClient(timeout=WAIT) as client:
        workers = [asyncio.create_task(keep_chatting(client, user)) for user in users]
        try:
            await wait_for(lambda: count(200) >= 8, "turns before the outage")
            await asyncio.to_thread(proxy.cut)
            cut_at = len(results)
            await wait_for(lambda: count(503, cut_at) >= 8, "503s during the outage")
            not_ready = await client.get(f"{proxied.url}/ready")
            await asyncio.to_thread(proxy.restore)
            restored_at = len(results)
            await wait_for(lambda: count(200, restored_at) >= 8, "turns after the outage")
        finally:
            stopping.set()
            await asyncio.gather(*workers)
        ready = await client.get(f"{proxied.url}/ready")

        # A turn cut off between its two transactions keeps its user message; the conversation continues.
        rows_by_conversation = {
            c["id"]: await stored(pg_engine, c["id"]) for c in await conversations_of(pg_engine, users)
        }
        cut_short = [cid for cid, rows in rows_by_conversation.items() if len(rows) == 1]
        if cut_short:
            owner = next(c["user_id"] for c in await conversations_of(pg_engine, users) if c["id"] == cut_short[0])
            ok(await chat(client, proxied, owner, "hello again", str(cut_short[0])))
            rows_by_conversation[cut_short[0]] = await stored(pg_engine, cut_short[0])

    assert proxied.process.poll() is None, "the same process recovered"
    assert proxied.process.pid == pid
    assert (not_ready.status_code, ready.status_code) == (503, 200)
    assert {response.status_code for _, _, response in results} <= {200, 503}, "nothing but success or 503"
    outage = [response for _, _, response in results[cut_at:restored_at] if response.status_code == 503]
    assert outage
    assert all(int(response.headers["retry-after"]) > 0 for response in outage)

    where: dict[str, list[tuple[uuid.UUID, list[RowMapping]]]] = {}
    for conversation_id, rows in rows_by_conversation.items():
        for turn in whole_turns(rows):
            where.setdefault(turn[0]["content"], []).append((conversation_id, turn))
    assert all(len(found) == 1 for found in where.values()), "no message stored twice"
    for _, text, response in results:
        if response.status_code == 200:
            [(conversation_id, turn)] = where[text]
            reply = response.json()
            assert (str(conversation_id), str(turn[-1]["id"])) == (reply["conversation_id"], reply["message_id"])


async def test_sigterm_lets_the_turn_in_flight_finish_and_takes_no_new_connections(
    replicas: dict[str, Replica], provider: FakeProviderServer, pg_engine: AsyncEngine
) -> None:
    server = replicas["sigterm"]
    user = new_user()
    slow_seconds = provider.slow_seconds
    provider.reset()
    provider.slow_seconds = 3.0
    provider.fail_next("slow")
    try:
        async with asyncio.timeout(60), httpx.AsyncClient(timeout=WAIT) as client:
            in_flight = asyncio.create_task(chat(client, server, user, "Add a task to buy tea"))
            await wait_for(lambda: len(provider.requests) == 1, "the model call")
            server.process.send_signal(signal.SIGTERM)

            refused = False
            for _ in range(100):
                try:
                    async with httpx.AsyncClient(timeout=1) as fresh:
                        await fresh.get(f"{server.url}/health")
                except httpx.ConnectError:
                    refused = True
                    break
                await asyncio.sleep(0.02)
            assert not in_flight.done(), "the turn was still running when the server stopped listening"

            reply = ok(await in_flight)
        exit_code = await asyncio.to_thread(server.process.wait, 20)
    finally:
        provider.slow_seconds = slow_seconds

    assert refused, "a stopping server must not accept new connections"
    assert exit_code in (0, -signal.SIGTERM), server.log()
    assert reply["tool_calls"][0]["result"]["title"] == "Buy tea"
    [turn] = whole_turns(await stored(pg_engine, reply["conversation_id"]))
    assert str(turn[-1]["id"]) == reply["message_id"]


# --- the HTTP statuses, in process --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "x" * 256, "k\x7f"])
async def test_a_malformed_idempotency_key_is_400(app_client: AppClient, key: str) -> None:
    user = new_user()
    async with app_client(FunctionAgent(lambda _: AgentResponse("hi"))) as client:
        response = await client.post(
            f"/api/{user}/chat", json={"message": "hi"}, headers={**auth(user), "Idempotency-Key": key}
        )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]


def test_busy_conversations_and_keys_are_409_with_retry_after_and_a_reused_key_is_422(postgres_url: str) -> None:
    """Litestar's test client blocks its caller for each request, so the request held at the model runs in a thread."""
    user = new_user()
    gate, entered = threading.Event(), threading.Event()

    async def model(request: AgentRequest) -> AgentResponse:
        entered.set()
        await asyncio.to_thread(gate.wait, WAIT)
        return AgentResponse(f"ok ({len(request.messages)} messages)")

    container = build_container(Settings(database_url=postgres_url, auth_secret=SECRET, turn_wait_seconds=0.2))
    container.agent.override(providers.Object(FunctionAgent(model)))
    url, headers = f"/api/{user}/chat", auth(user)
    keyed = {**headers, "Idempotency-Key": "k-1"}
    with TestClient(app=create_app(container), timeout=WAIT) as client, ThreadPoolExecutor(1) as pool:
        gate.set()
        first = client.post(url, json={"message": "one"}, headers=headers).json()
        gate.clear()
        entered.clear()
        body = {"message": "two", "conversation_id": first["conversation_id"]}
        running = pool.submit(client.post, url, json=body, headers=keyed)
        assert entered.wait(WAIT), "the keyed turn never reached the model"

        busy = client.post(url, json={**body, "message": "three"}, headers=headers)
        in_progress = client.post(url, json=body, headers=keyed)
        reused = client.post(url, json={"message": "other"}, headers=keyed)
        gate.set()
        done = running.result(WAIT)
        replayed = client.post(url, json=body, headers=keyed)

    assert (busy.status_code, in_progress.status_code, reused.status_code) == (409, 409, 422)
    assert int(busy.headers["retry-after"]) > 0
    assert int(in_progress.headers["retry-after"]) > 0
    assert busy.json()["detail"] == "Another turn is in progress on this conversation"
    assert done.status_code == 200
    assert replayed.status_code == 200
    assert replayed.content == done.content
