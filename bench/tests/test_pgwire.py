"""The counting proxy counts what PostgreSQL counts (needs the local PostgreSQL, as ``make bench`` does)."""

from __future__ import annotations

import asyncio
import functools
import time

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from bench.pgwire import Counts, MessageReader, WireCounter, WireCounterApp, counts_from
from bench.tests.conftest import ADMIN_DSN


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def test_messages_are_found_however_the_bytes_are_split() -> None:
    stream = (
        _message(b"1", b"")
        + _message(b"D", b"\x00\x01" + b"x" * 300)
        + _message(b"Z", b"T")
        + _message(b"C", b"SELECT 1\x00")
        + _message(b"Z", b"I")
    )
    expected = [(ord("1"), -1), (ord("D"), -1), (ord("Z"), ord("T")), (ord("C"), -1), (ord("Z"), ord("I"))]
    for size in (1, 2, 5, 6, 7, 64, len(stream)):
        seen: list[tuple[int, int]] = []
        reader = MessageReader(functools.partial(_record, seen), frozenset({ord("Z")}))
        for start in range(0, len(stream), size):
            reader.feed(stream[start : start + size])
        assert seen == expected, size


def _record(seen: list[tuple[int, int]], kind: int, first: int) -> None:
    seen.append((kind, first))


def test_the_untyped_startup_packet_is_skipped() -> None:
    seen: list[int] = []
    reader = MessageReader(lambda kind, _: seen.append(kind))
    startup = (8 + 10).to_bytes(4, "big") + (196608).to_bytes(4, "big") + b"user\x00pg\x00\x00"
    reader.skip(len(startup))
    reader.feed(startup + _message(b"Q", b"SELECT 1\x00") + _message(b"S", b""))
    assert seen == [ord("Q"), ord("S")]


def test_counts_subtract() -> None:
    assert Counts(3, 10, 4, 6).minus(Counts(1, 4, 1, 2)) == Counts(2, 6, 3, 4)
    assert counts_from({"floor": {"connections": 1, "statements": 2, "transactions": 3, "round_trips": 4}}) == {
        "floor": Counts(1, 2, 3, 4)
    }


BACKENDS_EXIT_SECONDS = 30.0


async def transactions_counted(admin: asyncpg.Connection, database: str) -> int:
    """``xact_commit + xact_rollback`` of ``database`` in ``pg_stat_database``, once no backend serves it.

    A backend adds its counts to ``pg_stat_database`` at most once a second while busy and up to ten
    seconds after it goes idle, but always as it exits; so the figure is exact once all have exited.
    Fails the test if some connection stays open for ``BACKENDS_EXIT_SECONDS``.
    """
    deadline = time.monotonic() + BACKENDS_EXIT_SECONDS
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    while await admin.fetchval(query, database):
        assert time.monotonic() < deadline, f"connections to {database} stayed open"
        await asyncio.sleep(0.05)
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    value: int = await admin.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
    )
    return value


async def test_statements_and_transactions_are_what_postgresql_counts(database: str) -> None:
    counter = WireCounter(("127.0.0.1", 5432))
    port = await counter.listen("server")
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        before = await transactions_counted(admin, database)
        connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{database}")  # asks for TLS first
        try:
            await connection.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")  # simple protocol
            await connection.execute("INSERT INTO t VALUES ($1, $2)", 1, "a")  # prepared, then executed
            await connection.execute("INSERT INTO t VALUES ($1, $2)", 2, "b")  # the prepared statement again
            async with connection.transaction():  # BEGIN, three statements, COMMIT: one transaction
                for key in (3, 4, 5):
                    await connection.execute("INSERT INTO t VALUES ($1, $2)", key, "c")
            with pytest.raises(asyncpg.UniqueViolationError):  # a failed statement: a rolled-back transaction
                await connection.execute("INSERT INTO t VALUES ($1, $2)", 1, "again")
            await connection.copy_records_to_table("t", records=[(6, "d"), (7, "e")])
            assert await connection.fetchval("SELECT count(*) FROM t") == 7
        finally:
            await connection.close()
        counted = await transactions_counted(admin, database)
    finally:
        await admin.close()
        await counter.close()

    counts = counter.counts["server"]
    assert counts.connections == 1
    # CREATE; two INSERTs; BEGIN, three INSERTs, COMMIT; the failed INSERT; COPY; SELECT.
    assert counts.statements == 11
    # The session's start; CREATE, INSERT, INSERT, the block, the failed INSERT, COPY, SELECT: as PostgreSQL counts.
    assert (counts.transactions, counted - before) == (8, 8)
    assert counts.round_trips > counts.transactions  # each statement of the block is a round trip


async def test_the_app_answers_counts_per_listener(database: str) -> None:
    app = WireCounterApp(("127.0.0.1", 5432), {})
    port = await app.counter.listen("harness")
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{database}")
    try:
        await connection.execute("SELECT 1")
    finally:
        await connection.close()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://counter") as client:
        counts = counts_from((await client.get("/counts")).json())
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/nope")).status_code == 404
    await app.counter.close()
    assert counts["harness"].statements == 1
    assert counts["harness"].transactions == 2  # the session's start, and the statement
