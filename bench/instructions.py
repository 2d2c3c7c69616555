"""Instructions per turn under valgrind: the one figure of the benchmark that a busy machine does not move.

CPU time per turn on a shared machine moves with whatever else runs (±15% between identical runs
here); the number of instructions a server executes for a turn does not. Each server is started twice
under ``valgrind --tool=cachegrind --cache-sim=no`` (no cache simulation: it only counts), once for
``SHORT`` and once for ``LONG`` turns by ``USERS`` sequential users on their own conversations, with
the instant fake model; the difference between the two totals, divided by the extra turns, is what
one more turn costs, with start-up, imports and warm-up cancelled out. The two runs go side by side.
Counted: the server process only (not the client, the fake model or PostgreSQL), like CPU per turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import httpx

from bench.load import VirtualUser, run_load

USERS = 4
SHORT, LONG = 20, 120
START_TIMEOUT_SECONDS = 300.0
"""A server under valgrind starts some 30 times slower than without it."""
_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)

ArgvFactory: TypeAlias = Callable[[int], list[str]]
"""The server's command line for a port."""
UserFactory: TypeAlias = Callable[[int], list[VirtualUser]]
"""Fresh users (new conversations) for a run of that many turns."""


def valgrind() -> str | None:
    return shutil.which("valgrind")


def total_instructions(cachegrind_output: str) -> int:
    """The ``summary:`` line of a cachegrind output file: every instruction the process executed."""
    found = _SUMMARY.search(cachegrind_output)
    if found is None:
        raise ValueError("no summary line in the cachegrind output")
    return int(found.group(1))


def per_turn(short_total: int, long_total: int, short_turns: int = SHORT, long_turns: int = LONG) -> float:
    if long_turns <= short_turns:
        raise ValueError("the long run needs more turns than the short one")
    return (long_total - short_total) / (long_turns - short_turns)


async def _one_run(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    port: int,
    turns: int,
    users: list[VirtualUser],
    log_dir: Path,
    cwd: Path,
) -> int:
    out = log_dir / f"{name}.{turns}.cachegrind"
    command = [str(valgrind()), "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", *argv]
    with (log_dir / f"{name}.{turns}.valgrind.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(*command, env=env, cwd=cwd, stdout=log, stderr=log)
    try:
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(trust_env=False) as client:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if process.returncode is not None:
                    raise RuntimeError(f"{name} under valgrind exited with {process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base_url}/health", timeout=5.0)).status_code == 200:
                        break
                await asyncio.sleep(0.25)
            else:
                raise RuntimeError(f"{name} under valgrind did not start within {START_TIMEOUT_SECONDS:g} s")
        result = await run_load(base_url, users, turns // len(users), deadline_seconds=600.0)
        if result.failures or result.timed_out:
            raise RuntimeError(f"{name} under valgrind failed turns: {dict(result.failures)}")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
    return total_instructions(out.read_text())


async def instructions_per_turn(
    name: str,
    argv_for_port: ArgvFactory,
    env: dict[str, str],
    users_for_run: UserFactory,
    free_port: Callable[[], int],
    log_dir: Path,
    cwd: Path,
) -> float:
    """Instructions one more turn costs ``name`` (see the module docstring)."""
    runs = []
    for turns in (SHORT, LONG):
        port = free_port()
        runs.append(_one_run(name, argv_for_port(port), env, port, turns, users_for_run(turns), log_dir, cwd))
    short_total, long_total = await asyncio.gather(*runs)
    return per_turn(short_total, long_total)
