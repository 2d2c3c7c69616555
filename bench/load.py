"""The async load generator: virtual users, each sending its turns one after another, all users at once.

Every user has its own ``httpx.AsyncClient`` with one kept-alive connection, so the client never
queues requests and the latencies measured are the server's (plus the loopback round trip).
Every user has a bounded number of turns and the whole run a deadline.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class VirtualUser:
    """A user with a valid token; ``conversation_id`` continues an existing (e.g. seeded) conversation."""

    user_id: str
    token: str
    conversation_id: str | None = None


@dataclass(slots=True)
class LoadResult:
    """What a run produced: the latency of every successful turn, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    timed_out: bool = False

    @property
    def turns(self) -> int:
        return len(self.latencies)

    @property
    def turns_per_second(self) -> float:
        return self.turns / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def default_message(user: VirtualUser, turn: int) -> str:
    return f"Please add a task to buy item {turn} for {user.user_id} before the weekend"


ReplyCheck = Callable[[dict[str, Any]], str | None]
"""Returns why a 200 reply is not what the scenario expects, or None when it is."""


KEEPALIVE_EXPIRY_SECONDS = 3.0
"""Below uvicorn's 5 s keep-alive timeout: a client that reuses a connection the server is closing at that
very moment gets a ReadError, which would count as a failed turn that no server caused."""


_PLAIN_HTTP_CONTEXT = ssl.create_default_context()
"""Shared by every client: httpx would otherwise build (and load CA certificates into) one per client,
about 20 ms of CPU each, for a benchmark that only speaks plain HTTP to 127.0.0.1."""


def user_client(request_timeout: float = 60.0) -> httpx.AsyncClient:
    """One user's client: a single kept-alive connection, like a browser tab; no proxy (``trust_env=False``).

    A client per user rather than one shared client: httpx's pool does work proportional to its open
    connections on every request, so one client holding 200 connections spends about 25 ms of CPU per
    request and the load generator, not the server, would set the pace. Alone, a request costs ~0.6 ms.
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS),
        timeout=httpx.Timeout(request_timeout),
        trust_env=False,
        verify=_PLAIN_HTTP_CONTEXT,
    )


async def run_load(
    base_url: str,
    users: Sequence[VirtualUser],
    turns: int,
    *,
    deadline_seconds: float,
    check: ReplyCheck | None = None,
    message: Callable[[VirtualUser, int], str] = default_message,
    client_factory: Callable[[], httpx.AsyncClient] = user_client,
) -> LoadResult:
    """Run ``turns`` turns for every user concurrently; stop (and say so) at ``deadline_seconds``."""
    if turns < 1 or not users:
        raise ValueError("a run needs at least one user and one turn")
    result = LoadResult()
    clients = [client_factory() for _ in users]
    try:
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(_user_turns(client, base_url, user, turns, result, check, message))
            for client, user in zip(clients, users, strict=True)
        ]
        _, pending = await asyncio.wait(tasks, timeout=deadline_seconds)
        result.wall_seconds = time.perf_counter() - started
        if pending:
            result.timed_out = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            result.failures[f"crash: {type(task.exception()).__name__}"] += 1
    return result


async def _user_turns(
    client: httpx.AsyncClient,
    base_url: str,
    user: VirtualUser,
    turns: int,
    result: LoadResult,
    check: ReplyCheck | None,
    message: Callable[[VirtualUser, int], str],
) -> None:
    url = f"{base_url}/api/{user.user_id}/chat"
    headers = {"authorization": f"Bearer {user.token}"}
    conversation_id = user.conversation_id
    for turn in range(turns):
        body: dict[str, Any] = {"message": message(user, turn)}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        began = time.perf_counter()
        try:
            response = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as error:
            result.failures[type(error).__name__] += 1
            continue
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            result.failures[f"HTTP {response.status_code}"] += 1
            continue
        reply = response.json()
        problem = check(reply) if check is not None else None
        if problem is not None:
            result.failures[problem] += 1
            continue
        result.latencies.append(elapsed)
        conversation_id = reply["conversation_id"]
