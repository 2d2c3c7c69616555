"""The processes ``make bench`` starts, each a subprocess on 127.0.0.1: the servers under test, the fake model,
and the proxy that counts what each server sends to PostgreSQL (``bench/pgwire.py``).

Also what they are started with (their command lines, their environment, the same for both servers, and
a database pool size that fits PostgreSQL's ``max_connections``), and when: the ``Fleet`` starts a server
when a scenario first needs it and stops it after the last one that does, so a chatcore with settings of
its own does not hold database connections beside the plain one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import httpx

from bench import procstat
from bench.pgwire import Counts, counts_from
from bench.report import CHATCORE, FLOOR
from bench.scenarios import ModelSetup, ServerSpec

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
DEFAULT_POOL_SIZE, DEFAULT_MAX_OVERFLOW = 30, 0
"""chatcore's SQLAlchemy pool defaults (``CHATCORE_DB_POOL_SIZE``, ``CHATCORE_DB_MAX_OVERFLOW``)."""
RESERVED_CONNECTIONS = 10
"""Left for PostgreSQL's superuser slots and the orchestrator's own connections (seeding, ANALYZE)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pool_budget(max_connections: int, servers: int, workers: int) -> tuple[int, int] | None:
    """Pool size and overflow per worker so every server's workers fit in PostgreSQL's ``max_connections``
    at once (both servers keep their connections between scenarios); None when chatcore's defaults fit."""
    per_worker = (max_connections - RESERVED_CONNECTIONS) // max(1, servers * workers)
    if per_worker >= DEFAULT_POOL_SIZE + DEFAULT_MAX_OVERFLOW:
        return None
    if per_worker < 2:
        raise SystemExit(f"PostgreSQL's max_connections ({max_connections}) is too small for {workers} workers")
    return per_worker, 0  # like chatcore's default: a fixed pool, no overflow connections to open and close


def server_env(
    database_url: str, secret: str, model_port: int, log_level: str, pool: tuple[int, int] | None = None
) -> dict[str, str]:
    """The environment every server reads: the caller's, minus any provider, auth or database settings."""
    own_prefixes = ("OPENAI_", "ANTHROPIC_", "CHATCORE_", "BETTER_AUTH_", "FAKE_MODEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own_prefixes) and k != "DATABASE_URL"}
    env.update(
        DATABASE_URL=database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        BETTER_AUTH_SECRET=secret,
        CHATCORE_LLM="openai",
        OPENAI_BASE_URL=f"http://127.0.0.1:{model_port}/v1",
        OPENAI_API_KEY="bench",
        CHATCORE_LLM_MAX_RETRIES="0",
        CHATCORE_LOG_LEVEL=log_level,
        PYTHONUNBUFFERED="1",
    )
    if pool is not None:
        env.update(CHATCORE_DB_POOL_SIZE=str(pool[0]), CHATCORE_DB_MAX_OVERFLOW=str(pool[1]))
    return env


class Server:
    """A subprocess serving HTTP on 127.0.0.1, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        port: int,
        log_dir: Path,
        *,
        workers: int = 1,
        spec: ServerSpec | None = None,
    ) -> None:
        self.name = name
        self.spec = spec or ServerSpec(name)
        self.workers = workers
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.log_path = log_dir / f"{self.spec.slug if spec else name}.log"
        self.base_url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, client: httpx.AsyncClient) -> None:
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=REPO, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.base_url}/health", timeout=2.0)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /health within {START_TIMEOUT_SECONDS:g} s:\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def pids(self) -> list[int]:
        return procstat.descendants(self.pid)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server itself, or the workers below its supervisor."""
        if self.workers == 1:
            return [self.pid]
        return [pid for pid in self.pids() if pid != self.pid] or [self.pid]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def target(self) -> str:
        """What the server is, as the figures name it (``floor`` or ``chatcore``, whatever its settings)."""
        return self.spec.target


class FakeModel(Server):
    async def configure(self, client: httpx.AsyncClient, setup: ModelSetup) -> None:
        response = await client.post(f"{self.base_url}/control", json={**asdict(setup), "reset_stats": True})
        response.raise_for_status()

    async def model_calls(self, client: httpx.AsyncClient) -> int:
        response = await client.get(f"{self.base_url}/control")
        response.raise_for_status()
        calls: int = response.json()["stats"]["openai"]
        return calls


def server_argv(name: str, port: int, *, workers: int) -> list[str]:
    if name == FLOOR:
        return [sys.executable, "-m", "bench.floor", "--port", str(port), "--workers", str(workers)]
    if name == CHATCORE:
        return chatcore_argv(port, workers)
    raise SystemExit(f"unknown target {name!r}: choose from {FLOOR}, {CHATCORE}")


def chatcore_argv(port: int, workers: int) -> list[str]:
    script = Path(sys.executable).with_name("chatcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "chatcore.entrypoints.cli"]
    return [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate", "--workers", str(workers)]


class WireCounterProcess(Server):
    """``bench/pgwire.py`` in its own process: one listening port per server (and the harness), counted apart."""

    async def counts(self, client: httpx.AsyncClient) -> dict[str, Counts]:
        response = await client.get(f"{self.base_url}/counts")
        response.raise_for_status()
        return counts_from(response.json())


class Fleet:
    """The servers under test, each running from the first scenario that needs it to the last (``plan``).

    ``plan[i]`` lists the servers of the i-th scenario. A server is started (and warmed up, alone on the
    machine) before the first scenario in its plan, and stopped once no later scenario needs it.
    """

    def __init__(
        self,
        plan: Sequence[Sequence[ServerSpec]],
        make: Callable[[ServerSpec], Server],
        warm_up: Callable[[Server], Awaitable[None]],
        client: httpx.AsyncClient,
    ) -> None:
        self.plan = [list(specs) for specs in plan]
        self._make = make
        self._warm_up = warm_up
        self._client = client
        self.running: dict[ServerSpec, Server] = {}
        self.startup_rss_mb: dict[str, float] = {}
        """RSS of each server's biggest worker right after start-up, before any request, by server name."""

    @staticmethod
    def concurrency(plan: Sequence[Sequence[ServerSpec]]) -> int:
        """How many servers run at once at most, given that each runs from its first scenario to its last."""
        spans: dict[ServerSpec, tuple[int, int]] = {}
        for index, specs in enumerate(plan):
            for spec in specs:
                first, _ = spans.get(spec, (index, index))
                spans[spec] = (first, index)
        return max((sum(1 for a, b in spans.values() if a <= i <= b) for i in range(len(plan))), default=0)

    async def servers_for(self, index: int) -> list[Server]:
        """The servers of scenario ``index``, started and warmed up if they were not running yet."""
        new = [spec for spec in self.plan[index] if spec not in self.running]
        started = [self._make(spec) for spec in new]
        for spec, server in zip(new, started, strict=True):
            self.running[spec] = server
        await asyncio.gather(*(server.start(self._client) for server in started))
        for server in started:
            self.startup_rss_mb[server.name] = (
                max(procstat.rss_bytes(pid) for pid in server.worker_pids()) / 1024 / 1024
            )
        for server in started:
            print(f"bench: warming up {server.name}", flush=True)
            await self._warm_up(server)
        return [self.running[spec] for spec in self.plan[index]]

    async def release_after(self, index: int) -> None:
        """Stop the servers no scenario after ``index`` needs."""
        later = {spec for specs in self.plan[index + 1 :] for spec in specs}
        for spec in [spec for spec in self.running if spec not in later]:
            await self.running.pop(spec).stop()

    async def stop_all(self) -> None:
        for server in list(self.running.values()):
            await server.stop()
        self.running.clear()
