"""Bounded storage as an operator meets it: ``chatcore gc`` and the janitor inside ``chatcore serve``, on PostgreSQL.

Each test has a database of its own (``own_database``): deletes work across users, so counts are only
meaningful on tables nobody else writes to.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.tables import idempotency_keys, messages, turn_events, turns
from chatcore.adapters.sqlalchemy.turn_claim_store import SqlAlchemyTurnClaimStore
from chatcore.adapters.sqlalchemy.turn_event_store import SqlAlchemyTurnEventStore
from chatcore.fakes import ScriptedAgent
from chatcore.model import AgentResponse, ChatMessage, TurnEvent, TurnStatus

from .conftest import SECRET, AppClient, auth
from .test_cli import CHATCORE, clean_env, free_port

pytestmark = pytest.mark.integration

GC_SUMMARY = re.compile(r"deleted (\d+) turn events, (\d+) turns and (\d+) idempotency keys")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(own_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(own_database, pool_size=2)
    yield engine
    await engine.dispose()


async def count(engine: AsyncEngine, table: object, *where: object) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table).where(*where)))  # type: ignore[arg-type]


async def streamed_turn(engine: AsyncEngine, user: str, events: int, *, end: TurnStatus | None) -> uuid.UUID:
    """A conversation with one streamed turn of ``events`` events, ended with ``end`` (None: still running)."""
    start = await SqlAlchemyConversationStore(engine).begin_turn(
        user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=5
    )
    store = SqlAlchemyTurnEventStore(engine)
    turn_id = uuid.uuid4()
    await store.begin(user, start.conversation.id, turn_id)
    await store.append(user, [TurnEvent(turn_id, seq, "delta", {"text": "w"}) for seq in range(1, events + 1)])
    if end is not None:
        await store.end(user, turn_id, end)
    return turn_id


def gc(database_url: str, retention: str) -> tuple[int, int, int]:
    done = subprocess.run(
        [CHATCORE, "gc"],
        env=clean_env(DATABASE_URL=database_url, CHATCORE_EVENT_RETENTION=retention),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = GC_SUMMARY.search(done.stdout)
    assert found, done.stdout
    events, turns_deleted, keys = map(int, found.groups())
    return events, turns_deleted, keys


async def test_chatcore_gc_deletes_what_expired_and_prints_it(own_database: str, engine: AsyncEngine) -> None:
    user = "gc-user"
    ended = [await streamed_turn(engine, user, 3, end=status) for status in (TurnStatus.COMPLETE, TurnStatus.FAILED)]
    running = await streamed_turn(engine, user, 4, end=None)
    claims = SqlAlchemyTurnClaimStore(engine)
    await claims.claim_idempotency_key(user, "live", "h", turn_id=uuid.uuid4(), hold_seconds=600)
    await claims.claim_idempotency_key(user, "dead", "h", turn_id=uuid.uuid4(), hold_seconds=0.001)
    recent = await streamed_turn(engine, user, 2, end=TurnStatus.COMPLETE)
    async with engine.begin() as connection:  # two hours pass for all but the recent turn
        await connection.execute(
            update(turns)
            .where(turns.c.id != recent)
            .values(updated_at=literal_column("updated_at - interval '2 hours'"))
        )

    first = await asyncio.to_thread(gc, own_database, "1h")
    second = await asyncio.to_thread(gc, own_database, "1h")

    assert first == (6, 2, 1)
    assert second == (0, 0, 0)
    assert await count(engine, turns, turns.c.id.in_(ended)) == 0
    assert await count(engine, turn_events, turn_events.c.turn_id == running) == 4, "a running turn is kept"
    assert await count(engine, turn_events, turn_events.c.turn_id == recent) == 2, "a turn within retention is kept"
    assert await count(engine, idempotency_keys) == 1
    assert await count(engine, messages) == 4, "every conversation keeps its messages"


async def test_the_janitor_runs_in_the_app_unless_switched_off(app_client: AppClient) -> None:
    async with app_client(ScriptedAgent([AgentResponse("ok")])) as client:
        janitor = client.app.state.janitor
        assert isinstance(janitor, asyncio.Task)
        assert not janitor.done()
    async with app_client(ScriptedAgent([AgentResponse("ok")]), janitor=False) as client:
        assert client.app.state.janitor is None
    assert janitor.cancelled(), "stopped with the app"


async def test_the_janitor_inside_chatcore_serve_deletes_expired_events(
    own_database: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        DATABASE_URL=own_database,
        BETTER_AUTH_SECRET=SECRET,
        CHATCORE_EVENT_RETENTION="1s",
        CHATCORE_JANITOR_INTERVAL="0.5s",
    )
    process = serve(env, port, tmp_path)
    base, user = f"http://127.0.0.1:{port}", "janitor-user"
    try:
        async with asyncio.timeout(90), httpx.AsyncClient(timeout=30) as client:
            while not await _serving(client, base):
                assert process.poll() is None, "chatcore serve exited"
                await asyncio.sleep(0.2)
            async with client.stream(
                "POST",
                f"{base}/api/{user}/chat",
                json={"message": "Add a task to buy milk"},
                headers={**auth(user), "Accept": "text/event-stream"},
            ) as response:
                body = "".join([text async for text in response.aiter_text()])
            found = re.search(r'"turn_id":"([0-9a-f-]+)"', body)
            assert response.status_code == 200, body
            assert found, body
            assert "event: done" in body
            turn_id = uuid.UUID(found.group(1))
            assert await count(engine, turns, turns.c.id == turn_id) == 1

            async def swept() -> bool:  # the janitor deletes its events, then the turn
                return not (
                    await count(engine, turns, turns.c.id == turn_id)
                    or await count(engine, turn_events, turn_events.c.turn_id == turn_id)
                )

            await eventually(swept)
            assert await count(engine, messages) == 4, "the conversation keeps its messages"
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)


def serve(env: dict[str, str], port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CHATCORE, "serve", "--no-migrate", "--port", str(port)],
        env=env,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def eventually(condition: Callable[[], Awaitable[bool]], pause: float = 0.25) -> None:
    """Return once ``condition`` holds (the caller's timeout bounds the wait)."""
    while not await condition():  # noqa: ASYNC110 - a database is polled: there is no event to wait for
        await asyncio.sleep(pause)


async def _serving(client: httpx.AsyncClient, base: str) -> bool:
    try:
        return (await client.get(f"{base}/health", timeout=1)).status_code == 200
    except httpx.TransportError:
        return False
