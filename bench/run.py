"""The orchestrator behind ``make bench``: chatcore against the floor, scenario by scenario, on PostgreSQL.

It creates a fresh database and migrates it, starts the fake model, the floor and ``chatcore serve``
as subprocesses on 127.0.0.1, warms both servers up, runs every scenario against both (one server at a
time, so each has the machine to itself), and measures the server process tree's CPU, its peak RSS,
PostgreSQL's CPU and the latency the clients saw. It prints the table and writes ``docs/performance.md``.

    python -m bench.run                      # the issue's sizes, about two minutes on 2 cores
    python -m bench.run --scale 0.25         # a quick look
    python -m bench.run --targets floor      # the floor alone (e.g. while chatcore is broken)

Every loop is bounded: users × turns per scenario, a deadline per scenario, a timeout per request
and per start-up; it talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
import jwt
import msgspec

from bench import procstat
from bench.fake_model import Mode
from bench.instructions import USERS, instructions_per_turn, valgrind
from bench.load import LoadResult, ReplyCheck, VirtualUser, run_load, user_client
from bench.profile import profile_overhead, py_spy
from bench.report import CHATCORE, DISTURBED_PERCENT, FLOOR, Measurement, Report

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "performance.md"
RUNTIME_LIMIT_SECONDS = 600.0
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
RSS_SAMPLE_SECONDS = 0.1
MIB = 1024 * 1024
DEFAULT_POOL_SIZE, DEFAULT_MAX_OVERFLOW = 30, 0
"""chatcore's SQLAlchemy pool defaults (``CHATCORE_DB_POOL_SIZE``, ``CHATCORE_DB_MAX_OVERFLOW``)."""
RESERVED_CONNECTIONS = 10
"""Left for PostgreSQL's superuser slots and the orchestrator's own connections (seeding, ANALYZE)."""
SATURATED_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    users: int
    turns: int
    latency_ms: float
    mode: Mode
    seeded_messages: int = 0
    """When above 0, every user continues its own conversation seeded with this many stored messages."""
    rounds: int = 1
    """Runs of users × turns one after another, each by new users (on new, or newly seeded, conversations), their
    figures pooled: more latencies for the percentiles at the same concurrency and conversation length."""

    @property
    def tool_calls_per_turn(self) -> int:
        return 1 if self.mode == "tool" else 0


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name.strip(), value


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    def users(n: int) -> int:
        return max(1, round(n * float(args.scale)))

    all_scenarios = [
        Scenario("overhead", "instant model", users(args.overhead_users), args.overhead_turns, 0, "text"),
        Scenario(
            "slow-model",
            f"{args.slow_latency_ms:g} ms model",
            users(args.slow_users),
            args.slow_turns,
            args.slow_latency_ms,
            "text",
        ),
        Scenario("tool-turn", "one add_task call, then an answer", users(args.tool_users), args.tool_turns, 0, "tool"),
        Scenario(
            "history-fresh",
            "new conversations",
            users(args.history_users),
            args.history_turns,
            args.history_latency_ms,
            "text",
            rounds=args.history_rounds,
        ),
        Scenario(
            "history-800",
            f"conversations seeded with {args.history_messages} messages",
            users(args.history_users),
            args.history_turns,
            args.history_latency_ms,
            "text",
            seeded_messages=args.history_messages,
            rounds=args.history_rounds,
        ),
    ]
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(wanted) - {s.name for s in all_scenarios}
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return [s for s in all_scenarios if s.name in wanted]


def user_id(server: str, scenario: Scenario, index: int, round_: int = 0) -> str:
    return f"{server}-{scenario.name}-{index:04d}" if round_ == 0 else f"{server}-{scenario.name}-r{round_}-{index:04d}"


def scenario_owners(server: str, scenario: Scenario) -> list[list[str]]:
    """The users of each round of ``scenario`` on ``server``."""
    return [[user_id(server, scenario, i, r) for i in range(scenario.users)] for r in range(scenario.rounds)]


def mint_token(secret: str, subject: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "email": f"{subject}@bench.invalid", "iat": now, "exp": now + 3 * 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def require_loopback(dsn: str) -> None:
    host = urlsplit(dsn).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"the benchmark only talks to 127.0.0.1; {host!r} is not a loopback address")


def database_dsn(admin_dsn: str, database: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


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
    """The environment both servers read: the caller's, minus any provider, auth or database settings."""
    own_prefixes = ("OPENAI_", "ANTHROPIC_", "CHATCORE_", "BETTER_AUTH_", "FAKE_MODEL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own_prefixes) and k != "DATABASE_URL"}
    env.update(
        DATABASE_URL=database_url,
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
        self, name: str, argv: Sequence[str], env: dict[str, str], port: int, log_dir: Path, *, workers: int = 1
    ) -> None:
        self.name = name
        self.workers = workers
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.log_path = log_dir / f"{name}.log"
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


class FakeModel(Server):
    async def configure(self, client: httpx.AsyncClient, *, latency_ms: float, mode: Mode) -> None:
        response = await client.post(
            f"{self.base_url}/control", json={"latency_ms": latency_ms, "mode": mode, "reset_stats": True}
        )
        response.raise_for_status()

    async def model_calls(self, client: httpx.AsyncClient) -> int:
        response = await client.get(f"{self.base_url}/control")
        response.raise_for_status()
        calls: int = response.json()["stats"]["openai"]
        return calls


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, keep: bool) -> AsyncIterator[str]:
    """A new, empty database for this run, dropped afterwards unless ``keep``."""
    name = f"chatcore_bench_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}"
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


def reply_check(expected_tool_calls: int) -> ReplyCheck:
    def check(reply: dict[str, Any]) -> str | None:
        calls = reply.get("tool_calls")
        if not isinstance(calls, list) or len(calls) != expected_tool_calls:
            return f"reply with {len(calls) if isinstance(calls, list) else 'no'} tool calls"
        if not reply.get("response") or not reply.get("message_id") or not reply.get("conversation_id"):
            return "incomplete reply"
        if expected_tool_calls and any(call.get("error") for call in calls):
            return "tool call failed"
        return None

    return check


async def sample_peak_rss(pids: Sequence[int], stop: asyncio.Event) -> int:
    """The highest VmRSS of any one of ``pids`` until ``stop`` is set: a fallback where VmHWM cannot be reset."""
    peak = 0
    while not stop.is_set():
        peak = max([peak, *(procstat.rss_bytes(pid) for pid in pids)])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_SECONDS)
    return peak


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    secret: str
    model: FakeModel
    control: httpx.AsyncClient
    dsn: str
    database: str

    async def database_backends(self) -> list[int]:
        """The PostgreSQL backends serving the benchmark's database, so tests that share the server don't count."""
        connection = await asyncpg.connect(self.dsn)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database
            )
        finally:
            await connection.close()
        return [row["pid"] for row in rows]

    async def measure(
        self,
        server: Server,
        scenario: Scenario,
        conversations: dict[str, str] | None = None,
    ) -> Measurement:
        rounds = [
            [
                VirtualUser(uid, mint_token(self.secret, uid), conversations.get(uid) if conversations else None)
                for uid in owners
            ]
            for owners in scenario_owners(server.name, scenario)
        ]
        await self.model.configure(self.control, latency_ms=scenario.latency_ms, mode=scenario.mode)
        workers = server.worker_pids()
        hwm_reset = all(procstat.reset_peak_rss(pid) for pid in workers)
        server_cpu, db_cpu, harness_cpu = procstat.CpuMeter(), procstat.CpuMeter(), procstat.CpuMeter()
        harness = [os.getpid(), *self.model.pids()]
        server_cpu.start(server.pids())
        db_cpu.start(await self.database_backends())
        harness_cpu.start(harness)
        machine_before = procstat.machine_busy_seconds()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_peak_rss(workers, stop_sampling))
        result = LoadResult()
        for users in rounds:
            one = await run_load(
                server.base_url,
                users,
                scenario.turns,
                deadline_seconds=self.args.scenario_timeout,
                check=reply_check(scenario.tool_calls_per_turn),
            )
            result.latencies.extend(one.latencies)
            result.failures.update(one.failures)
            result.wall_seconds += one.wall_seconds
            result.timed_out = result.timed_out or one.timed_out
        stop_sampling.set()
        sampled_peak = await sampler
        machine_seconds = procstat.machine_busy_seconds() - machine_before
        cpu_seconds = server_cpu.stop(server.pids())
        db_seconds = db_cpu.stop(await self.database_backends())
        harness_seconds = harness_cpu.stop(harness)
        others = max(0.0, machine_seconds - cpu_seconds - db_seconds - harness_seconds)
        capacity = result.wall_seconds * len(os.sched_getaffinity(0))
        hwm_peak = max(procstat.peak_rss_bytes(pid) for pid in workers) if hwm_reset else 0
        model_calls = await self.model.model_calls(self.control)
        attempted = max(1, result.turns + sum(result.failures.values()))
        per_turn = max(1, result.turns)
        return Measurement(
            scenario=scenario.name,
            server=server.name,
            rounds=scenario.rounds,
            users=scenario.users,
            turns_per_user=scenario.turns,
            ok=result.turns,
            failures=dict(result.failures),
            timed_out=result.timed_out,
            wall_seconds=result.wall_seconds,
            turns_per_second=result.turns_per_second,
            p50_ms=result.percentile_ms(50),
            p95_ms=result.percentile_ms(95),
            p99_ms=result.percentile_ms(99),
            server_cpu_ms_per_turn=cpu_seconds * 1000 / per_turn,
            db_cpu_ms_per_turn=db_seconds * 1000 / per_turn,
            peak_rss_mb=max(hwm_peak, sampled_peak) / MIB,
            model_calls_per_turn=model_calls / attempted,
            background_cpu_percent=100 * others / capacity if capacity > 0 else math.nan,
            harness_cpu_ms_per_turn=harness_seconds * 1000 / per_turn,
        )

    async def warm_up(self, server: Server, max_users: int) -> None:
        """Imports, pools, prepared statements and every connection a scenario will use, before measuring.

        The last round holds ``max_users`` turns open at once behind a slow model, so the client's
        connections, the server's connections to the model and its database pool all reach their size.
        """
        rounds: tuple[tuple[Mode, int, int, float], ...] = (
            ("text", 16, 3, 0),
            ("tool", 8, 2, 0),
            ("text", max_users, 2, 100),
        )
        for index, (mode, users, turns, latency_ms) in enumerate(rounds):
            scenario = Scenario(f"warmup{index}", "warm-up", users, turns, latency_ms, mode)
            await self.model.configure(self.control, latency_ms=latency_ms, mode=scenario.mode)
            uids = [user_id(server.name, scenario, i) for i in range(users)]
            result = await run_load(
                server.base_url,
                [VirtualUser(uid, mint_token(self.secret, uid)) for uid in uids],
                turns,
                deadline_seconds=self.args.scenario_timeout,
                check=reply_check(scenario.tool_calls_per_turn),
            )
            if result.failures or result.timed_out:
                raise RuntimeError(
                    f"{server.name} failed its warm-up ({mode}): {dict(result.failures)}\n{server.log_tail()}"
                )

    async def analyze(self, dsn: str) -> None:
        """Fresh planner statistics, as autovacuum keeps them in production.

        Without them the plans prepared while the tables were nearly empty (sequential scans) stay
        cached on pooled connections and each turn gets slower as the tables grow.
        """
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("ANALYZE conversations, messages, tasks")
        finally:
            await connection.close()


def saturation_notes(scenarios: Sequence[Scenario], measurements: Sequence[Measurement]) -> list[str]:
    """Say where a scenario with a model latency was bound by CPU rather than by the model.

    N users behind a model that takes L seconds can make at most N / L turns a second; a server
    far below that was queueing for CPU, so its latencies measure throughput, not waiting.
    """
    notes = []
    by_name = {s.name: s for s in scenarios}
    for m in measurements:
        scenario = by_name.get(m.scenario)
        if scenario is None or scenario.latency_ms <= 0:
            continue
        demand = scenario.users / (scenario.latency_ms / 1000)
        if m.turns_per_second < SATURATED_SHARE * demand:
            notes.append(
                f"{m.scenario} on {m.server} was CPU-bound: {scenario.users} users behind a "
                f"{scenario.latency_ms:g} ms model could make up to {demand:.0f} turns/s, the machine served "
                f"{m.turns_per_second:.0f}; its latencies are mostly queueing for CPU, not waiting on the model."
            )
    return notes


def machine_facts(pg_version: str) -> dict[str, str]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import uvicorn

    loop = "uvloop" if _importable("uvloop") else "asyncio"
    parser = "httptools" if _importable("httptools") else "h11"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "chatcore": source_revision(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu_model,
        "memory": memory,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "PostgreSQL": pg_version,
        "uvicorn": f"{uvicorn.__version__} ({loop} loop, {parser} parser, for both servers)",
    }


def source_revision() -> str:
    """The commit measured, and whether tracked files differed from it.

    Read-only git commands, with ``--no-optional-locks`` so they never take the index lock
    from someone committing in the same checkout.
    """
    git = shutil.which("git")
    if git is None:
        return "unknown"

    def run_git(*arguments: str) -> str:
        command = [git, "--no-optional-locks", "-C", str(REPO), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.strip()  # noqa: S603 - fixed arguments

    try:
        commit = run_git("rev-parse", "--short", "HEAD")
        dirty = run_git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def server_argv(name: str, port: int, *, workers: int) -> list[str]:
    if name == FLOOR:
        return [sys.executable, "-m", "bench.floor", "--port", str(port), "--workers", str(workers)]
    if name == CHATCORE:
        return chatcore_argv(port, workers)
    raise SystemExit(f"unknown target {name!r}: choose from {FLOOR}, {CHATCORE}")


def counted_users(secret: str, server: str, turns: int) -> list[VirtualUser]:
    """New users for one valgrind run (``bench/instructions.py``), each starting a conversation of their own."""
    return [
        VirtualUser(uid, mint_token(secret, uid)) for uid in (f"{server}-counted-{turns}-{i}" for i in range(USERS))
    ]


def chatcore_argv(port: int, workers: int) -> list[str]:
    script = Path(sys.executable).with_name("chatcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "chatcore.entrypoints.cli"]
    return [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate", "--workers", str(workers)]


async def migrate(database_url: str) -> None:
    from chatcore.adapters.sqlalchemy.migrate import run_migrations_async

    await run_migrations_async(database_url)


async def run(args: argparse.Namespace, argv: Sequence[str]) -> Report:
    started = time.perf_counter()
    require_loopback(args.admin_dsn)
    scenarios = scenarios_from(args)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    log_dir = Path(args.log_dir)
    secret = secrets.token_urlsafe(32)
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(args.admin_dsn, args.keep_db))
        dsn = database_dsn(args.admin_dsn, database)
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        print(f"bench: database {database}; logs in {log_dir}", flush=True)
        await migrate(database_url)
        connection = await asyncpg.connect(dsn)
        try:
            pg_version = str(await connection.fetchval("SHOW server_version"))
            # Other clients of the same PostgreSQL (tests running beside the benchmark) hold connections too.
            max_connections = int(await connection.fetchval("SHOW max_connections")) - int(
                await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            )
        finally:
            await connection.close()

        control = await stack.enter_async_context(user_client(request_timeout=10.0))
        model_port = free_port()
        model = FakeModel(
            "fake-model",
            [sys.executable, "-m", "bench.fake_model", "--port", str(model_port)],
            dict(os.environ),
            model_port,
            log_dir,
        )
        stack.push_async_callback(model.stop)
        await model.start(control)

        pool = pool_budget(max_connections, len(targets), args.workers)
        env = server_env(database_url, secret, model_port, args.chatcore_log_level, pool)
        servers: list[Server] = []
        for name in targets:
            port = free_port()
            own_env = env | dict(args.chatcore_env) if name == CHATCORE else env
            server = Server(
                name, server_argv(name, port, workers=args.workers), own_env, port, log_dir, workers=args.workers
            )
            stack.push_async_callback(server.stop)
            servers.append(server)
        await asyncio.gather(*(server.start(control) for server in servers))
        startup_rss = {
            server.name: max(procstat.rss_bytes(pid) for pid in server.worker_pids()) / MIB for server in servers
        }
        max_users = max(s.users for s in scenarios)

        seeded: dict[str, dict[str, str]] = {}
        for scenario in scenarios:
            if scenario.seeded_messages:
                for server in servers:
                    owners = [uid for round_ in scenario_owners(server.name, scenario) for uid in round_]
                    seeded[f"{server.name}/{scenario.name}"] = await seed_conversations(
                        dsn, owners, scenario.seeded_messages
                    )
        bench = Bench(args, secret, model, control, dsn, database)
        for server in servers:
            print(f"bench: warming up {server.name}", flush=True)
            await bench.warm_up(server, max_users)

        report = Report(command=shlex.join(["python", "-m", "bench.run", *argv]), machine=machine_facts(pg_version))
        if pool is not None:
            report.notes.append(
                f"Database pools shrunk to {pool[0]} + {pool[1]} overflow connections per worker (both servers) "
                f"to fit the {max_connections} connections PostgreSQL had free."
            )
        report.notes.append(
            "RSS per worker after start-up, before any request: "
            + ", ".join(f"{name} {mib:.0f} MB" for name, mib in startup_rss.items())
            + "."
        )
        for index, scenario in enumerate(scenarios):
            await bench.analyze(dsn)
            order = servers if index % 2 == 0 else servers[::-1]
            for server in order:
                print(f"bench: {scenario.name} ({scenario.description}) on {server.name}", flush=True)
                measurement = await bench.measure(server, scenario, seeded.get(f"{server.name}/{scenario.name}"))
                report.measurements.append(measurement)
                print(
                    f"bench:   {measurement.turns_per_second:.1f} turns/s, p95 {measurement.p95_ms:.1f} ms, "
                    f"{measurement.server_cpu_ms_per_turn:.2f} CPU ms/turn, {measurement.failed} failed "
                    f"(load generator + fake model {measurement.harness_cpu_ms_per_turn:.2f} CPU ms/turn, "
                    f"other load {measurement.background_cpu_percent:.0f}%)",
                    flush=True,
                )

        report.notes.extend(saturation_notes(scenarios, report.measurements))
        if args.instructions or (args.instructions is None and valgrind() is not None):
            await model.configure(control, latency_ms=0, mode="text")
            for server in servers:
                print(f"bench: instructions per turn on {server.name} (valgrind)", flush=True)
                report.instructions[server.name] = await instructions_per_turn(
                    server.name,
                    functools.partial(server_argv, server.name, workers=1),
                    server.env,
                    functools.partial(counted_users, secret, server.name),
                    free_port,
                    log_dir,
                    REPO,
                )
                print(f"bench:   {report.instructions[server.name] / 1e6:.2f} M instructions/turn", flush=True)
        if CHATCORE in targets and (args.profile or (args.profile is None and py_spy() is not None)):
            chatcore = next(s for s in servers if s.name == CHATCORE)
            overhead = next((s for s in scenarios if s.name == "overhead"), None) or Scenario(
                "overhead", "instant model", 32, 15, 0, "text"
            )
            report.profile = await profile_overhead(bench, chatcore, overhead, log_dir)
    report.runtime_seconds = time.perf_counter() - started
    return report


def document(report: Report) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in report.machine.items())
    parts = [
        "# Performance",
        "",
        "Written by `make bench` (`bench/run.py`); rerun it to refresh this page. It measures chatcore "
        "(`chatcore serve` on PostgreSQL, OpenAI wire format) against *the floor*: `bench/floor.py`, a bare ASGI "
        "app doing the least work a turn needs with raw asyncpg, httpx2 and PyJWT (decode the token, one query for "
        "ownership and the history window, the model call(s), one statement appending the turn's messages). "
        "Both talk to the same fake model (`bench/fake_model.py`) and the same database, one server at a time; "
        "chatcore's figures are read as ratios to the floor's. Model calls: the floor's go through httpx2 on "
        "chatcore's `SpreadConnectionPools`, chatcore's as shipped through aiohttp (`CHATCORE_LLM_HTTP`; "
        "`--chatcore-env CHATCORE_LLM_HTTP=httpx` compares them on the same client).",
        "",
        f"Command: `{report.command}`, total runtime {report.runtime_seconds:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
        machine,
        "",
        "How it is measured: a scenario is N concurrent virtual users (an httpx client and a connection each), each "
        "sending its turns one after another; turns/s is successful turns over the scenario's wall time; latency "
        "is per request as the client saw it. Server CPU is user+system time of the server process and its "
        "children (`/proc/<pid>/stat`) over the scenario, divided by the turns; PostgreSQL CPU is the same for "
        "the backends connected to the benchmark's database (background writers and autovacuum not included). "
        "Peak RSS is `VmHWM` of each worker, reset before each scenario. Both servers "
        "were warmed up first, and the order alternates between scenarios. The load generator, the fake model "
        "and PostgreSQL share the machine's cores with the server under test, so turns/s is a property of the "
        "whole machine; CPU per turn is the server's own. *Other load* is the share of the machine used by "
        "processes outside the benchmark during the scenario (from `/proc/stat`); a row above "
        f"{DISTURBED_PERCENT:g}% is flagged. chatcore runs as shipped, logging at INFO (`--chatcore-log-level` "
        "changes it); the floor logs nothing. Expect a few percent of variation between runs.",
        "",
        "Scenarios: **overhead** instant model; **slow-model** the model takes 500 ms; **tool-turn** every turn "
        "is one `add_task` call, the tool run, then a text answer (two model calls); **history-fresh** / "
        "**history-800** the same load (instant model unless `--history-latency-ms`) on new conversations and on "
        "conversations seeded with 800 stored messages (both servers read a 50-message window), each in rounds "
        "(`--history-rounds`): every round new users on new (or newly seeded) conversations, one round after "
        "another, the latencies of all rounds pooled, so their p95 rests on more turns at the same concurrency "
        "and conversation length.",
        "",
        report.render(RUNTIME_LIMIT_SECONDS),
    ]
    if report.notes:
        parts += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    if report.profile:
        parts += ["", report.profile]
    return "\n".join(parts) + "\n"


KEPT_HEADING = "## Tuning log"
"""A section of the output file written by hand (what was changed, and the profiles before and after): kept
across runs, after the measured sections, so a rerun refreshes the figures without losing the history."""


def kept_by_hand(previous: str) -> str:
    """The hand-written ``KEPT_HEADING`` section of the previous output, to end the new one with ('' if none)."""
    start = previous.find("\n" + KEPT_HEADING + "\n")
    if start < 0:
        return ""
    return "\n" + previous[start + 1 :].rstrip() + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="chatcore's benchmark, against the floor.")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--targets", default=f"{FLOOR},{CHATCORE}", help="servers to measure, comma-separated")
    parser.add_argument(
        "--scenarios", default="overhead,slow-model,tool-turn,history-fresh,history-800", help="comma-separated"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's user count")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for each server")
    parser.add_argument("--overhead-users", type=int, default=32)
    parser.add_argument("--overhead-turns", type=int, default=15)
    parser.add_argument("--slow-users", type=int, default=200)
    parser.add_argument("--slow-turns", type=int, default=3)
    parser.add_argument("--slow-latency-ms", type=float, default=500)
    parser.add_argument("--tool-users", type=int, default=32)
    parser.add_argument("--tool-turns", type=int, default=15)
    parser.add_argument("--history-users", type=int, default=32)
    parser.add_argument("--history-turns", type=int, default=10)
    parser.add_argument("--history-messages", type=int, default=800)
    parser.add_argument("--history-latency-ms", type=float, default=0)
    parser.add_argument(
        "--history-rounds", type=int, default=3, help="rounds of the history scenarios, new users each (pooled)"
    )
    parser.add_argument("--scenario-timeout", type=float, default=120.0, help="seconds one scenario may take")
    parser.add_argument("--chatcore-log-level", default="INFO", help="CHATCORE_LOG_LEVEL for chatcore (as shipped)")
    parser.add_argument(
        "--chatcore-env",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="a setting for chatcore only, e.g. CHATCORE_LLM_HTTP=httpx (repeatable; default: as shipped)",
    )
    parser.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count instructions per turn of each server under valgrind (default: when valgrind is installed)",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile chatcore in an extra overhead run with py-spy (default: when py-spy is installed)",
    )
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Markdown file to write ('-' for none)")
    parser.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "chatcore-bench"))
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.workers < 1 or args.scenario_timeout <= 0:
        parser.error("--scale and --scenario-timeout must be positive and --workers at least 1")
    if args.history_rounds < 1:
        parser.error("--history-rounds must be at least 1")
    for name in ("overhead", "slow", "tool", "history"):
        if getattr(args, f"{name}_users") < 1 or getattr(args, f"{name}_turns") < 1:
            parser.error(f"--{name}-users and --{name}-turns must be at least 1")
    if args.history_messages < 4:
        parser.error("--history-messages must be at least 4")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run(args, argv))
    text = document(report)
    print("\n" + report.render(RUNTIME_LIMIT_SECONDS), flush=True)
    for note in report.notes:
        print(f"- {note}")
    if args.output != "-":
        output = Path(args.output)
        output.write_text(text + kept_by_hand(output.read_text() if output.exists() else ""))
        print(f"\nbench: wrote {args.output}")
    failed = any(m.failed or m.timed_out for m in report.measurements)
    return 1 if failed or math.isnan(report.runtime_seconds) else 0


if __name__ == "__main__":
    sys.exit(main())
