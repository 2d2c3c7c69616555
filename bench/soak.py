"""The soak: two replicas on PostgreSQL under steady load while one of them is killed and the database cut.

``python -m bench.soak`` (``make soak``) runs it for a few minutes; ``tests/integration/test_soak.py`` runs
a short form of it in ``make test``. What it does:

- starts the fake model (``bench.fake_model`` in tool mode: every turn calls ``add_task`` once, titled after
  the user's message, then answers in streamed pieces) and two ``chatcore serve`` replicas on one
  database, the second one through a TCP proxy that can cut it off from PostgreSQL;
- runs users that each keep one conversation going, one request after another: streamed and JSON turns,
  every one with an ``Idempotency-Key`` and retried with it (on either replica, a streamed one with the
  ``Last-Event-ID`` it saw) when it fails, is refused or its connection drops; beside them, requests with
  ``if_busy: interrupt`` and ``if_busy: reject`` on the same conversations;
- SIGKILLs one replica (each in turn) every ``--kill-every`` seconds and starts it again, and cuts the
  database connection once for a few seconds.

Afterwards it checks that every conversation continues with a new turn; that no message is lost or
duplicated (every reply a client got is stored once, with its user message; a rejected message is not
stored; sequence numbers have no gap; no tool call has two results); that each tool side effect happened
at most once per call id (tasks per title at most the stored ``add_task`` calls with that title, each
stored result naming its own task); that no turn is left ``running``; and that after ``chatcore gc``
with a short retention ``turn_events`` holds only rows of turns newer than it. It prints its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import httpx
from tests.integration.faulty_proxy import FaultyTcpProxy

from bench.database import database_dsn, fresh_database, migrate, require_loopback
from bench.servers import FakeModel, Server, chatcore_argv, free_port, server_env
from chatcore.adapters.auth.hs256 import mint_hs256_token

SECRET = "soak-secret-0123456789abcdef0123456789"
RETENTION_SECONDS = 2
"""``chatcore gc`` runs at the end with this retention, after every turn ended longer ago than that."""
BUSY_POLICIES = ("interrupt", "reject")


@dataclass(frozen=True, slots=True)
class SoakPlan:
    seconds: float = 180.0
    users: int = 6
    kill_every: float = 20.0
    kills: int | None = None
    """This many kills, the load going on until they are done (None: one every ``kill_every`` seconds until the end)."""
    cut_at: float = 0.5
    """When the database connection is cut, as a fraction of the run."""
    cut_seconds: float = 3.0
    latency_ms: float = 300.0
    """Each model call's latency: a turn makes two (the add_task call, then the answer)."""
    streamed_share: float = 0.5
    busy_share: float = 0.15
    """The share of requests that come with a concurrent ``if_busy`` request on the same conversation."""
    lease_seconds: float = 3.0
    attempt_seconds: float = 30.0
    """The most one attempt of a request may take (a stream that stalls longer is dropped and retried)."""
    attempts: int = 12
    seed: int = 17


@dataclass(slots=True)
class Counts:
    """What happened, for the report."""

    requests: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    restarts: int = 0
    database_cuts: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "outcomes": dict(self.outcomes),
            "retries": dict(self.retries),
            "kills": self.kills,
            "restarts": self.restarts,
            "database_cuts": self.database_cuts,
        }


@dataclass(slots=True)
class Request:
    """One message a user sent (retried until it got an answer): what the checks compare with the database."""

    user: str
    text: str
    key: str
    streamed: bool
    if_busy: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    status: str | None = None
    """``complete``, ``interrupted`` or ``awaiting_approval`` when answered; ``rejected`` for a 409 to
    ``if_busy: reject``; None when every attempt failed."""
    attempts: int = 0


class SoakFailed(AssertionError):
    """Checks failed after the soak: something was lost, duplicated or left behind. Carries the counts."""

    def __init__(self, problems: Sequence[str], figures: dict[str, Any] | None = None) -> None:
        shown = "; ".join(problems[:20]) + (f" … and {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(shown)
        self.problems = list(problems)
        self.figures = figures or {}


# --- the fleet --------------------------------------------------------------------------------------------------


class Fleet:
    """The fake model, two replicas (``b`` through the proxy) and the kills and the cut."""

    def __init__(self, database_url: str, proxy: FaultyTcpProxy, plan: SoakPlan, log_dir: Path) -> None:
        model_port = free_port()
        self.model = FakeModel(
            "model",
            [
                sys.executable,
                "-m",
                "bench.fake_model",
                "--port",
                str(model_port),
                "--latency-ms",
                str(plan.latency_ms),
                "--mode",
                "tool",
                "--chunks",
                "12",
            ],
            server_env(database_url, SECRET, model_port, "WARNING"),
            model_port,
            log_dir,
        )
        proxied = database_dsn(database_url, database_url.rsplit("/", 1)[1], port=proxy.port)
        self.replicas = [
            self._replica("a", database_url, model_port, plan, log_dir),
            self._replica("b", proxied, model_port, plan, log_dir),
        ]
        self.proxy = proxy
        self.up = {replica.name: True for replica in self.replicas}

    @staticmethod
    def _replica(name: str, database_url: str, model_port: int, plan: SoakPlan, log_dir: Path) -> Server:
        port = free_port()
        env = server_env(database_url, SECRET, model_port, "WARNING", (6, 4))
        env.update(
            CHATCORE_LEASE_SECONDS=f"{plan.lease_seconds:g}",
            CHATCORE_TURN_WAIT_SECONDS="10",
            CHATCORE_LLM_TIMEOUT="15",
            CHATCORE_DB_POOL_TIMEOUT="5",
            CHATCORE_SHUTDOWN_GRACE="5",
            CHATCORE_JANITOR="true",
            CHATCORE_JANITOR_INTERVAL="2s",
            CHATCORE_HISTORY_LIMIT="40",
        )
        return Server(name, chatcore_argv(port, 1), env, port, log_dir)

    async def start(self, client: httpx.AsyncClient) -> None:
        await self.model.start(client)
        await asyncio.gather(*(replica.start(client) for replica in self.replicas))

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in [*self.replicas, self.model]))

    def pick(self, rng: random.Random) -> Server:
        """A replica, preferring one that is up (a client may still reach the one being killed)."""
        live = [replica for replica in self.replicas if self.up[replica.name]]
        return rng.choice(live or self.replicas)

    async def kill_and_restart(self, replica: Server, client: httpx.AsyncClient, counts: Counts) -> None:
        assert replica.process is not None
        self.up[replica.name] = False
        replica.process.send_signal(signal.SIGKILL)
        await replica.process.wait()
        counts.kills += 1
        await replica.start(client)
        counts.restarts += 1
        self.up[replica.name] = True

    async def kill_in_turn(self, plan: SoakPlan, stop: asyncio.Event, counts: Counts) -> None:
        """SIGKILL a replica every ``kill_every`` seconds from the start (each replica in turn, at most ``kills``
        times) and start it again; a kill due while the last one's replica still starts waits for it."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            for number, victim in enumerate(itertools.cycle(self.replicas), start=1):
                if plan.kills is not None and number > plan.kills:
                    return
                due = started + number * plan.kill_every - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(due, 0))
                if stop.is_set():
                    return
                await self.kill_and_restart(victim, client, counts)

    async def cut_once(self, plan: SoakPlan, stop: asyncio.Event, counts: Counts) -> None:
        """Cut replica ``b`` off from the database for ``cut_seconds``, ``cut_at`` into the run."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), plan.seconds * plan.cut_at)
        if stop.is_set():
            return
        self.proxy.cut()
        counts.database_cuts += 1
        await asyncio.sleep(plan.cut_seconds)
        self.proxy.restore()


# --- the users ----------------------------------------------------------------------------------------------------


def headers(user: str, key: str | None = None, *, streamed: bool = False) -> dict[str, str]:
    token = mint_hs256_token(SECRET, user_id=user, email=f"{user}@example.com", ttl_seconds=7200)
    result = {"Authorization": f"Bearer {token}"}
    if key is not None:
        result["Idempotency-Key"] = key
    if streamed:
        result["Accept"] = "text/event-stream"
    return result


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.partition(": ")[::2] for line in block.split("\n") if line and not line.startswith(":"))
            if "event" in fields:
                yield int(fields.get("id", "0")), fields["event"], json.loads(fields["data"])


class Attempt(Exception):
    """One attempt of a request did not get an answer; ``kind`` says why (for the counts)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


RETRIED_STATUSES = {
    409: "busy",
    429: "rate_limited",
    500: "server_error",
    502: "model",
    503: "unavailable",
    504: "model",
}


class User:
    def __init__(self, name: str, fleet: Fleet, plan: SoakPlan, counts: Counts, rng: random.Random) -> None:
        self.name = name
        self.fleet = fleet
        self.plan = plan
        self.counts = counts
        self.rng = rng
        self.conversation_id: str | None = None
        self.sent: list[Request] = []
        self._numbers = iter(range(1, 1_000_000))

    def new_request(self, *, streamed: bool, if_busy: str | None = None) -> Request:
        text = f"soak {self.name} {next(self._numbers)} {'busy ' + if_busy if if_busy else 'item'}"
        request = Request(self.name, text, str(uuid.uuid4()), streamed, if_busy, self.conversation_id)
        self.sent.append(request)
        self.counts.requests["streamed" if streamed else "json"] += 1
        if if_busy:
            self.counts.requests[f"if_busy_{if_busy}"] += 1
        return request

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        # The first message opens the conversation: the later ones, and the busy ones, go to it.
        await self.send(client, self.new_request(streamed=False))
        while not stop.is_set():
            request = self.new_request(streamed=self.rng.random() < self.plan.streamed_share)
            if self.conversation_id is not None and self.rng.random() < self.plan.busy_share:
                policy = self.rng.choice(BUSY_POLICIES)
                busy = self.new_request(streamed=self.rng.random() < self.plan.streamed_share, if_busy=policy)
                await asyncio.gather(self.send(client, request), self.send_later(client, busy, 0.3))
            else:
                await self.send(client, request)

    async def send_later(self, client: httpx.AsyncClient, request: Request, seconds: float) -> None:
        await asyncio.sleep(seconds * self.rng.random() + 0.1)
        await self.send(client, request)

    async def send(self, client: httpx.AsyncClient, request: Request) -> None:
        """Send ``request`` until it gets an answer, with its key, on either replica; a 409 to ``reject`` is one."""
        last_event = 0
        for attempt in range(self.plan.attempts):
            if attempt:
                self.counts.retries["keyed_repeats"] += 1
                await asyncio.sleep(min(2.0, 0.2 * attempt) * (0.5 + self.rng.random()))
            replica = self.fleet.pick(self.rng)
            request.attempts += 1
            try:
                async with asyncio.timeout(self.plan.attempt_seconds):
                    if request.streamed:
                        last_event = await self._streamed(client, replica, request, last_event)
                    else:
                        await self._json(client, replica, request)
            except Attempt as failed:
                if failed.kind == "rejected":
                    request.status = "rejected"
                    self.counts.outcomes["rejected"] += 1
                    return
                self.counts.retries[failed.kind] += 1
                continue
            except TimeoutError:
                self.counts.retries["stalled"] += 1
                continue
            except httpx.HTTPError:
                self.counts.retries["connection"] += 1
                continue
            if self.conversation_id is None:
                self.conversation_id = request.conversation_id
            self.counts.outcomes[request.status or "unknown"] += 1
            return
        self.counts.outcomes["gave_up"] += 1

    def _body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"message": request.text}
        if request.conversation_id is not None:
            body["conversation_id"] = request.conversation_id
        if request.if_busy is not None:
            body["if_busy"] = request.if_busy
        return body

    def _refused(self, request: Request, status: int) -> Attempt:
        if status == 409 and request.if_busy == "reject":
            return Attempt("rejected")
        kind = RETRIED_STATUSES.get(status)
        if kind is None:
            raise SoakFailed([f"{request.text!r} got {status}, which no retry can fix"])
        return Attempt(kind)

    async def _json(self, client: httpx.AsyncClient, replica: Server, request: Request) -> None:
        response = await client.post(
            f"{replica.base_url}/api/{self.name}/chat",
            json=self._body(request),
            headers=headers(self.name, request.key),
        )
        if response.status_code != 200:
            raise self._refused(request, response.status_code)
        reply = response.json()
        request.conversation_id = reply["conversation_id"]
        request.message_id, request.status = reply["message_id"], reply["status"]

    async def _streamed(self, client: httpx.AsyncClient, replica: Server, request: Request, last_event: int) -> int:
        sent = headers(self.name, request.key, streamed=True)
        if last_event:
            sent["Last-Event-ID"] = str(last_event)
        async with client.stream(
            "POST", f"{replica.base_url}/api/{self.name}/chat", json=self._body(request), headers=sent
        ) as response:
            if response.status_code != 200:
                raise self._refused(request, response.status_code)
            async for number, kind, data in sse_events(response):
                last_event = number
                if kind == "turn":
                    request.conversation_id = data["conversation_id"]
                elif kind == "error":
                    raise self._refused(request, int(data.get("status_code", 500)))
                elif kind == "done":
                    request.conversation_id = data["conversation_id"]
                    request.message_id, request.status = data["message_id"], data["status"]
                    return last_event
        raise Attempt("stream_ended")


# --- the checks ---------------------------------------------------------------------------------------------------


async def continue_every_conversation(client: httpx.AsyncClient, fleet: Fleet, users: Sequence[User]) -> int:
    """Every conversation takes one more turn (after the soak, on either replica); the number that did."""

    async def one(user: User) -> None:
        request = user.new_request(streamed=False)
        await user.send(client, request)
        if request.status not in ("complete", "interrupted"):
            raise SoakFailed([f"{user.name}'s conversation did not continue: {request.status}"])

    await asyncio.gather(*(one(user) for user in users if user.conversation_id is not None))
    return sum(1 for user in users if user.conversation_id is not None)


def plain_dsn(database_url: str) -> str:
    """The URL as asyncpg takes it (SQLAlchemy's ``+asyncpg`` dropped)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def wait_until_no_turn_runs(database_url: str, seconds: float) -> int:
    """The running turns left after waiting up to ``seconds`` for the dead ones to be closed."""
    connection = await asyncpg.connect(plain_dsn(database_url))
    try:
        deadline = time.monotonic() + seconds
        while True:
            running = int(await connection.fetchval("SELECT count(*) FROM turns WHERE status = 'running'"))
            if running == 0 or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


def calls_of(row: asyncpg.Record) -> list[dict[str, Any]]:
    """A message row's tool calls (asyncpg reads a JSON column as its text)."""
    value = row["tool_calls"]
    calls: list[dict[str, Any]] = json.loads(value) if isinstance(value, str) else value or []
    return calls or []


async def check_messages(
    connection: asyncpg.Connection, requests: Sequence[Request]
) -> tuple[dict[str, int], list[str]]:
    """No message lost or duplicated, every tool side effect at most once per call id: the figures, the problems."""
    rows = await connection.fetch(
        "SELECT id, conversation_id, seq, role, content, tool_calls, tool_call_id, status, turn_id, is_error "
        "FROM messages ORDER BY conversation_id, seq"
    )
    problems: list[str] = []
    by_conversation: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for row in rows:
        by_conversation.setdefault(row["conversation_id"], []).append(row)
    for conversation, stored in by_conversation.items():
        if [row["seq"] for row in stored] != list(range(1, len(stored) + 1)):
            problems.append(f"conversation {conversation}: sequence numbers with a gap or a repeat")
    message_ids = Counter(row["id"] for row in rows)
    if any(count > 1 for count in message_ids.values()):
        problems.append("a message id stored twice")

    calls: dict[str, tuple[str, Any]] = {}
    results: Counter[str] = Counter()
    result_tasks: dict[str, int] = {}
    for row in rows:
        for call in calls_of(row):
            if call["id"] in calls:
                problems.append(f"tool call {call['id']} stored twice")
            arguments = call.get("arguments")
            calls[call["id"]] = (call["name"], json.loads(arguments) if isinstance(arguments, str) else arguments)
        if row["role"] == "tool":
            results[row["tool_call_id"]] += 1
            with contextlib.suppress(ValueError, TypeError, KeyError):
                content = json.loads(row["content"])
                if not row["is_error"] and isinstance(content, dict) and "task_id" in content:
                    result_tasks[row["tool_call_id"]] = int(content["task_id"])
    problems += [f"tool call {call_id} has {n} results" for call_id, n in results.items() if n > 1]
    problems += [f"result of unknown call {call_id}" for call_id in results if call_id not in calls]

    tasks = await connection.fetch("SELECT id, user_id, title FROM tasks")
    tasks_by_title = Counter((task["user_id"], task["title"]) for task in tasks)
    task_ids = {task["id"]: (task["user_id"], task["title"]) for task in tasks}
    owners = await connection.fetch("SELECT id, user_id FROM conversations")
    user_of: dict[uuid.UUID, str] = {row["id"]: row["user_id"] for row in owners}
    calls_by_title: Counter[tuple[str, str]] = Counter()
    conversation_of_call = {call["id"]: row["conversation_id"] for row in rows for call in calls_of(row)}
    for call_id, (name, arguments) in calls.items():
        if name == "add_task":
            calls_by_title[(user_of[conversation_of_call[call_id]], str(arguments.get("title")))] += 1
    for title, count in tasks_by_title.items():
        if count > calls_by_title[title]:
            problems.append(f"{count} tasks titled {title[1]!r} from {calls_by_title[title]} add_task calls")
    if len(set(result_tasks.values())) != len(result_tasks):
        problems.append("two add_task results name the same task")
    for call_id, task_id in result_tasks.items():
        if task_id not in task_ids:
            problems.append(f"add_task {call_id} reported task {task_id}, which does not exist")

    # A message is answered when its turn stored a reply (an assistant message without tool calls, or one cut short
    # by a stop); a turn cut short by a kill or an outage before its reply left the message unanswered, whatever its
    # status says, and its retry stores it again. Answered twice would be a turn run twice.
    answered_turns = {
        row["turn_id"]
        for row in rows
        if row["role"] == "assistant" and (not calls_of(row) or row["status"] == "interrupted")
    }
    user_messages = Counter(
        (row["conversation_id"], row["content"])
        for row in rows
        if row["role"] == "user" and row["turn_id"] in answered_turns
    )
    by_id = {row["id"]: row for row in rows}
    for request in requests:
        if request.status == "rejected":
            # Refused at once, nothing stored; unless an earlier attempt ran before its connection dropped.
            if request.attempts == 1 and any(row["role"] == "user" and row["content"] == request.text for row in rows):
                problems.append(f"rejected {request.text!r} was stored")
            continue
        if request.status is None:
            continue
        reply = by_id.get(uuid.UUID(request.message_id)) if request.message_id else None
        if reply is None or str(reply["conversation_id"]) != request.conversation_id:
            problems.append(f"the reply to {request.text!r} ({request.message_id}) is not stored")
            continue
        turn = [row for row in by_conversation[reply["conversation_id"]] if row["turn_id"] == reply["turn_id"]]
        if request.text not in [row["content"] for row in turn if row["role"] == "user"]:
            problems.append(f"{request.text!r} is not the user message of its reply's turn")
        answered = user_messages[(reply["conversation_id"], request.text)]
        if answered > 1:
            problems.append(f"{request.text!r} is answered {answered} times")
    interrupted_calls = sum(1 for call_id in calls if results[call_id] == 0)
    figures = {
        "messages": len(rows),
        "tool_calls": len(calls),
        "tool_calls_without_result": interrupted_calls,
        "tasks": len(tasks),
    }
    return figures, problems


async def collect_garbage(database_url: str, log_dir: Path) -> tuple[datetime, str]:
    """``chatcore gc`` with a retention of ``RETENTION_SECONDS``, once every turn ended longer ago; when it ran."""
    await asyncio.sleep(RETENTION_SECONDS + 0.5)
    env = server_env(database_url, SECRET, 9, "WARNING")
    env["CHATCORE_EVENT_RETENTION"] = f"{RETENTION_SECONDS}s"
    started = datetime.now(UTC)
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("chatcore")),
        "gc",
        env=env,
        cwd=log_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise SoakFailed([f"chatcore gc failed: {output.decode(errors='replace')}"])
    return started, output.decode().strip()


async def old_events(connection: asyncpg.Connection, before: datetime) -> int:
    """Events left of turns that ended before ``before`` (there should be none after gc)."""
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM turn_events e JOIN turns t ON t.id = e.turn_id "
            "WHERE t.status <> 'running' AND t.updated_at < $1",
            before,
        )
    )


# --- the run ------------------------------------------------------------------------------------------------------


async def soak(database_url: str, plan: SoakPlan, log_dir: Path) -> dict[str, Any]:
    """Run the soak against ``database_url`` (a migrated database of its own: gc deletes across users)."""
    rng = random.Random(plan.seed)  # noqa: S311 - a repeatable load, not a secret
    counts = Counts()
    address = urlsplit(database_url)
    with FaultyTcpProxy(address.hostname or "127.0.0.1", address.port or 5432) as proxy:
        fleet = Fleet(database_url, proxy, plan, log_dir)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=plan.attempt_seconds, limits=limits) as client:
            try:
                await fleet.start(client)
                users = [
                    User(f"soak-{index}-{uuid.uuid4().hex[:6]}", fleet, plan, counts, rng)
                    for index in range(plan.users)
                ]
                stop = asyncio.Event()
                started = time.monotonic()
                chaos = [
                    asyncio.create_task(fleet.kill_in_turn(plan, stop, counts)),
                    asyncio.create_task(fleet.cut_once(plan, stop, counts)),
                ]
                load = [asyncio.create_task(user.run(client, stop)) for user in users]
                await asyncio.sleep(plan.seconds)
                if plan.kills is not None:  # every planned kill happens, however slowly a loaded machine restarts
                    await asyncio.wait_for(asyncio.shield(chaos[0]), plan.kills * (plan.kill_every + 60))
                stop.set()
                await asyncio.gather(*chaos, *load)
                duration = time.monotonic() - started
                continued = await continue_every_conversation(client, fleet, users)
                # Turns whose replica was killed are closed by the next request on their conversation or by the
                # janitor (every 2 s here) once their lease expired.
                running = await wait_until_no_turn_runs(database_url, plan.lease_seconds + 15)
            finally:
                await fleet.stop()
        requests = [request for user in users for request in user.sent]
        connection = await asyncpg.connect(plain_dsn(database_url))
        try:
            figures, problems = await check_messages(connection, requests)
            if running:
                problems.insert(0, f"{running} turns left running")
            turns = Counter(row["status"] for row in await connection.fetch("SELECT status FROM turns"))
            gc_started, gc_summary = await collect_garbage(database_url, log_dir)
            left = await old_events(connection, gc_started - timedelta(seconds=RETENTION_SECONDS))
            if counts.retries["server_error"]:
                problems.append(f"{counts.retries['server_error']} answers were 500")
            if left:
                problems.append(f"{left} events of turns older than the retention are left after chatcore gc")
            events_left = int(await connection.fetchval("SELECT count(*) FROM turn_events"))
        finally:
            await connection.close()
    result = {
        "seconds": round(duration, 1),
        "users": plan.users,
        "conversations_continued": continued,
        **counts.report(),
        "streamed_turn_states": dict(turns),
        **figures,
        "gc": gc_summary,
        "turn_events_left": events_left,
    }
    if problems:
        raise SoakFailed(problems, result)
    return result


def summary(figures: dict[str, Any]) -> str:
    """One paragraph of the counts, for a person (the JSON above it has them all)."""
    requests, outcomes, retries = figures["requests"], figures["outcomes"], figures["retries"]
    return (
        f"soak passed: {figures['seconds']} s, {figures['users']} users; "
        f"{requests.get('streamed', 0)} streamed and {requests.get('json', 0)} JSON requests "
        f"({requests.get('if_busy_interrupt', 0)} with if_busy=interrupt, {requests.get('if_busy_reject', 0)} "
        f"with if_busy=reject); {figures['kills']} replicas SIGKILLed and restarted, "
        f"{figures['database_cuts']} database cut; {retries.get('keyed_repeats', 0)} keyed retries; answered "
        f"{outcomes.get('complete', 0)} complete, {outcomes.get('interrupted', 0)} interrupted, "
        f"{outcomes.get('rejected', 0)} rejected, {outcomes.get('gave_up', 0)} given up; "
        f"{figures['tool_calls']} tool calls ({figures['tool_calls_without_result']} without a result), "
        f"{figures['tasks']} tasks; every conversation continued ({figures['conversations_continued']}); "
        f"{figures['gc']}"
    )


async def run(args: argparse.Namespace, plan: SoakPlan) -> dict[str, Any]:
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="chatcore-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {plan.seconds:g} s, logs in {log_dir}", file=sys.stderr)
    async with fresh_database(args.admin_dsn, args.keep_db) as name:
        dsn = database_dsn(args.admin_dsn, name)
        await migrate(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
        return await soak(dsn, plan, log_dir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Two chatcore replicas under load while one is killed every few seconds and the database is cut "
        "once; then checks that nothing was lost, duplicated or left running. Needs PostgreSQL on 127.0.0.1.",
    )
    defaults = SoakPlan()
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="how long the load runs")
    parser.add_argument("--users", type=int, default=defaults.users, help="users, one conversation each")
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every, help="seconds between SIGKILLs")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms, help="the fake model's latency")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--keep-db", action="store_true", help="keep the soak's database afterwards")
    parser.add_argument("--log-dir", help="where the servers' logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    require_loopback(args.admin_dsn)
    plan = SoakPlan(
        seconds=args.seconds,
        users=args.users,
        kill_every=args.kill_every,
        latency_ms=args.latency_ms,
        seed=args.seed,
    )
    try:
        figures = asyncio.run(run(args, plan))
    except SoakFailed as failed:
        print(json.dumps(failed.figures, indent=2))
        print(f"soak FAILED: {failed}", file=sys.stderr)
        raise SystemExit(1) from failed
    print(json.dumps(figures, indent=2))
    print(summary(figures))


if __name__ == "__main__":
    main()
