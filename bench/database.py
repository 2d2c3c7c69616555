"""The benchmark's own PostgreSQL database: created fresh for a run, migrated, seeded, analysed, dropped.

It only ever talks to a loopback address. Seeded conversations are written with COPY, in the shape
chatcore stores them (turns of four: the user, an ``add_task`` call, its result, the answer).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import msgspec


def require_loopback(dsn: str) -> None:
    host = urlsplit(dsn).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"the benchmark only talks to 127.0.0.1; {host!r} is not a loopback address")


def database_dsn(admin_dsn: str, database: str, *, port: int | None = None) -> str:
    """``admin_dsn`` naming ``database`` instead (and, through a proxy, another port on the same host)."""
    parts = urlsplit(admin_dsn)
    if port is not None:
        userinfo, at, _ = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo}{at}{parts.hostname}:{port}")
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True, slots=True)
class ServerFacts:
    version: str
    free_connections: int
    """``max_connections`` less the client connections already open (other clients share the server)."""
    preloaded: str
    """``shared_preload_libraries``: ``pg_stat_statements`` counts statements only when loaded from there."""


async def server_facts(admin_dsn: str) -> ServerFacts:
    admin = await asyncpg.connect(admin_dsn)
    try:
        in_use = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return ServerFacts(
            version=str(await admin.fetchval("SHOW server_version")),
            free_connections=int(await admin.fetchval("SHOW max_connections")) - int(in_use),
            preloaded=str(await admin.fetchval("SHOW shared_preload_libraries")),
        )
    finally:
        await admin.close()


async def migrate(database_url: str) -> None:
    from chatcore.adapters.sqlalchemy.migrate import run_migrations_async

    await run_migrations_async(database_url)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, keep: bool) -> AsyncIterator[str]:
    """A new, empty database for this run, dropped afterwards unless ``keep``."""
    name = f"chatcore_bench_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        if not keep:
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


SEEDED_USER_TEXT = "Please add a task to {verb} the {thing} before {day}, and remind me about it (note {n})."
SEEDED_REPLY_TEXT = "Done! I've added '{title}' to your list as task {n}. Anything else you'd like me to do?"
VERBS = ("buy", "fix", "call about", "clean", "return", "book")
THINGS = ("groceries", "bike", "dentist", "garage", "library books", "flights", "printer", "car")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend")


def seeded_messages(conversation_id: uuid.UUID, count: int, now: datetime) -> list[tuple[Any, ...]]:
    """``count`` stored messages in turns of four: user, assistant calling add_task, tool result, answer."""
    rows: list[tuple[Any, ...]] = []
    call_id = ""
    title = ""
    for seq in range(1, count + 1):
        n = (seq - 1) // 4
        at = now - timedelta(seconds=count - seq)
        turn_id = None
        tool_calls = None
        tool_call_id = None
        match (seq - 1) % 4:
            case 0:
                verb, thing, day = VERBS[n % len(VERBS)], THINGS[n % len(THINGS)], DAYS[n % len(DAYS)]
                title = f"{verb.capitalize()} the {thing}"
                role, content = "user", SEEDED_USER_TEXT.format(verb=verb, thing=thing, day=day, n=n)
            case 1:
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                role, content = "assistant", ""
                tool_calls = msgspec.json.encode([{"id": call_id, "name": "add_task", "arguments": {"title": title}}])
            case 2:
                role, tool_call_id = "tool", call_id
                content = msgspec.json.encode({"task_id": n + 1, "status": "created", "title": title}).decode()
            case _:
                role, content = "assistant", SEEDED_REPLY_TEXT.format(title=title, n=n + 1)
        rows.append(
            (
                uuid.uuid4(),
                conversation_id,
                seq,
                role,
                content,
                tool_calls.decode() if tool_calls else None,
                tool_call_id,
                False,
                "complete",
                turn_id,
                at,
            )
        )
    return rows


async def seed_conversations(dsn: str, owners: Sequence[str], count: int) -> dict[str, str]:
    """One conversation of ``count`` messages per owner, written with COPY; returns owner → conversation id."""
    now = datetime.now(UTC)
    conversations: dict[str, str] = {}
    conversation_rows = []
    message_rows: list[tuple[Any, ...]] = []
    for owner in owners:
        conversation_id = uuid.uuid4()
        conversations[owner] = str(conversation_id)
        created = now - timedelta(seconds=count)
        conversation_rows.append((conversation_id, owner, "Seeded conversation", created, now, count))
        message_rows.extend(seeded_messages(conversation_id, count, now))
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.copy_records_to_table(
                "conversations",
                records=conversation_rows,
                columns=["id", "user_id", "title", "created_at", "updated_at", "last_seq"],
            )
            await connection.copy_records_to_table(
                "messages",
                records=message_rows,
                columns=[
                    "id",
                    "conversation_id",
                    "seq",
                    "role",
                    "content",
                    "tool_calls",
                    "tool_call_id",
                    "is_error",
                    "status",
                    "turn_id",
                    "created_at",
                ],
            )
        await connection.execute("VACUUM ANALYZE conversations, messages, tasks")
    finally:
        await connection.close()
    return conversations


async def analyze(connection: asyncpg.Connection) -> None:
    """Fresh planner statistics, as autovacuum keeps them in production.

    Without them the plans prepared while the tables were nearly empty (sequential scans) stay
    cached on pooled connections and each turn gets slower as the tables grow.
    """
    await connection.execute("ANALYZE conversations, messages, tasks")
