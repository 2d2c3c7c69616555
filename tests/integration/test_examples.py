"""The examples run as their READMEs say: the host apps as processes spoken to over HTTP, on SQLite and on
PostgreSQL with chatcore's tables in their own schema, and the library-only script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ..conftest import fresh_database

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
START_TIMEOUT_SECONDS = 120
SCHEMA = "chat"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(example: str, directory: Path, **env: str) -> Iterator[str]:
    """``python examples/<example>/app.py`` as its README starts it; its base URL once /healthz answers."""
    port = _free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHATCORE_", "BETTER_AUTH_", "OPENAI_", "ANTHROPIC_", "OTEL_"))
        and name != "DATABASE_URL"
    }
    log_path = directory / f"{example}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / example / "app.py")],
            env={**environment, "PORT": str(port), **env},
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"{example} exited:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{example} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def check_fastapi_host(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        reply = await client.post(
            "/chat/api/alice/chat", json={"message": "Cancel order 2"}, headers=bearer("alice-token")
        )
        assert reply.status_code == 200, reply.text
        [call] = reply.json()["tool_calls"]
        assert (call["name"], call["arguments"]) == ("cancel_order", {"order_id": 2})
        assert call["result"] == {"id": 2, "item": "coffee beans", "status": "cancelled"}

        # The shop's own route, with the same token, sees what the tool did.
        orders = (await client.get("/orders", headers=bearer("alice-token"))).json()
        assert {order["id"]: order["status"] for order in orders} == {1: "open", 2: "cancelled"}

        missing = await client.post(
            "/chat/api/alice/chat", json={"message": "cancel order 3"}, headers=bearer("alice-token")
        )
        assert missing.json()["tool_calls"][0]["error"] == "You have no order 3."  # bob's order: not alice's to cancel

        history = (await client.get("/chat/api/alice/conversations", headers=bearer("alice-token"))).json()
        assert len(history["items"]) == 2
        assert (await client.get("/chat/api/alice/conversations", headers=bearer("bob-token"))).status_code == 403
        assert (await client.get("/chat/api/alice/conversations", headers=bearer("nobody"))).status_code == 401
        assert (await client.get("/orders", headers=bearer("nobody"))).status_code == 401


async def check_litestar_host(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.post("/login", json={"user": "alice", "password": "wrong"})).status_code == 401
        login = await client.post("/login", json={"user": "alice", "password": "wonderland"})
        token = login.json()["token"]

        reply = await client.post("/chat/api/alice/chat", json={"message": "note: buy milk"}, headers=bearer(token))
        assert reply.status_code == 200, reply.text
        [call] = reply.json()["tool_calls"]
        assert (call["name"], call["result"]["text"]) == ("add_note", "buy milk")

        listed = await client.post(
            "/chat/api/alice/chat",
            json={"message": "my notes?", "conversation_id": reply.json()["conversation_id"]},
            headers=bearer(token),
        )
        assert listed.json()["tool_calls"][0]["result"] == ["buy milk"]
        assert (await client.get("/notes", headers=bearer(token))).json() == ["buy milk"]

        messages = await client.get(
            f"/chat/api/alice/conversations/{reply.json()['conversation_id']}/messages", headers=bearer(token)
        )
        roles = [message["role"] for message in messages.json()["items"]]
        assert roles[0] == "user"
        assert roles.count("user") == 2
        assert (await client.get("/chat/api/alice/conversations", headers=bearer("forged"))).status_code == 401


CHECKS = {"fastapi_host": check_fastapi_host, "litestar_host": check_litestar_host}
HOST_TABLES = {"fastapi_host": set(), "litestar_host": {"notes"}}


@pytest.mark.parametrize("example", sorted(CHECKS))
async def test_host_app_on_sqlite(example: str, tmp_path: Path) -> None:
    with running(example, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}") as base:
        await CHECKS[example](base)
    assert (tmp_path / "app.db").exists()


async def _tables(url: str) -> dict[str, set[str]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_schema IN ('public', :schema)"
                ),
                {"schema": SCHEMA},
            )
            tables: dict[str, set[str]] = {"public": set(), SCHEMA: set()}
            for schema, table in rows:
                tables[schema].add(table)
            return tables
    finally:
        await engine.dispose()


@pytest.fixture
async def empty_postgres(postgres_server: URL) -> AsyncIterator[str]:
    async with fresh_database(postgres_server) as url:
        yield url


@pytest.mark.integration
@pytest.mark.parametrize("example", sorted(CHECKS))
async def test_host_app_on_postgresql_with_chatcore_in_its_own_schema(
    example: str, tmp_path: Path, empty_postgres: str
) -> None:
    with running(example, tmp_path, DATABASE_URL=empty_postgres, CHATCORE_DB_SCHEMA=SCHEMA) as base:
        await CHECKS[example](base)

    tables = await _tables(empty_postgres)
    assert tables["public"] == HOST_TABLES[example]  # nothing of chatcore's beside the host's own
    assert {"conversations", "messages", "turns", "chatcore_alembic_version"} <= tables[SCHEMA]


def test_library_only_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "library_only.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines: list[Any] = done.stdout.splitlines()
    assert lines[0] == "tool get_balance({}) -> {'user': 'alice', 'balance': 120.5}"
    assert lines[1] == "assistant: Your balance is 120.50 EUR."
