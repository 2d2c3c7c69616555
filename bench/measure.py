"""Measuring one scenario against one server: the load, the server's CPU and memory, PostgreSQL's CPU, the machine.

``Bench.measure`` runs a scenario's rounds of virtual users (``bench/load.py``) and reads
``/proc`` (``bench/procstat.py``) around them: CPU of the server's process tree, of the PostgreSQL
backends serving the benchmark's database and of the harness itself, the machine's busy time
(so the share used by anything else can be reported), and each worker's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import jwt

from bench import procstat
from bench.instructions import USERS
from bench.load import BUSY_PAUSE_SECONDS, LoadResult, ReplyCheck, VirtualUser, run_load, user_turns
from bench.pgwire import Counts
from bench.report import Measurement
from bench.scenarios import ModelSetup, Scenario, scenario_owners, user_id
from bench.servers import FakeModel, Server, WireCounterProcess

RSS_SAMPLE_SECONDS = 0.1
MIB = 1024 * 1024
SATURATED_SHARE = 0.8


def mint_token(secret: str, subject: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "email": f"{subject}@bench.invalid", "iat": now, "exp": now + 3 * 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def reply_check(expected_tool_calls: int) -> ReplyCheck:
    def check(reply: dict[str, Any]) -> str | None:
        calls = reply.get("tool_calls")
        if not isinstance(calls, list) or len(calls) != expected_tool_calls:
            return f"reply with {len(calls) if isinstance(calls, list) else 'no'} tool calls"
        if not reply.get("response") or not reply.get("message_id") or not reply.get("conversation_id"):
            return "incomplete reply"
        if expected_tool_calls and any(call.get("error") for call in calls):
            return "tool call failed"
        if reply.get("interrupted"):
            return "interrupted"
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
    connection: asyncpg.Connection
    """The orchestrator's own connection to the benchmark's database, held for the whole run: PostgreSQL's
    ``max_connections`` is shared with whatever else runs on the machine, so a new one could be refused."""
    database: str
    counter: WireCounterProcess | None = None
    """Counts each server's statements and transactions (``bench/pgwire.py``); None: not counted."""
    warm_up_users: int = 32

    async def database_backends(self) -> list[int]:
        """The PostgreSQL backends serving the benchmark's database, so tests that share the server don't count."""
        rows = await self.connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database
        )
        return [row["pid"] for row in rows]

    async def wire_counts(self, server: Server) -> Counts | None:
        """What ``server`` sent PostgreSQL so far, when its connections go through the counter."""
        if self.counter is None or not server.spec.counted:
            return None
        return (await self.counter.counts(self.control)).get(server.spec.slug, Counts())

    def deadline(self, scenario: Scenario) -> float:
        """A scenario may take ``--scenario-timeout`` seconds beyond its users' own model time."""
        return float(self.args.scenario_timeout) + scenario.turns * scenario.model.latency_ms / 1000

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
            for owners in scenario_owners(server.target, scenario)
        ]
        protocol = scenario.protocol_for(server.target)
        await self.model.configure(self.control, scenario.model)
        workers = server.worker_pids()
        hwm_reset = all(procstat.reset_peak_rss(pid) for pid in workers)
        server_cpu, db_cpu, harness_cpu = procstat.CpuMeter(), procstat.CpuMeter(), procstat.CpuMeter()
        harness = [os.getpid(), *self.model.pids(), *(self.counter.pids() if self.counter else ())]
        wire_before = await self.wire_counts(server)
        server_cpu.start(server.pids())
        db_cpu.start(await self.database_backends())
        harness_cpu.start(harness)
        machine_before = procstat.machine_busy_seconds()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_peak_rss(workers, stop_sampling))
        result = LoadResult()
        for users in rounds:
            result.add(
                await run_load(
                    server.base_url,
                    users,
                    scenario.turns,
                    deadline_seconds=self.deadline(scenario),
                    check=reply_check(scenario.tool_calls_per_turn),
                    client_factory=functools.partial(user_turns, protocol, self.request_timeout(scenario)),
                )
            )
        stop_sampling.set()
        sampled_peak = await sampler
        machine_seconds = procstat.machine_busy_seconds() - machine_before
        cpu_seconds = server_cpu.stop(server.pids())
        db_seconds = db_cpu.stop(await self.database_backends())
        harness_seconds = harness_cpu.stop(harness)
        wire_after = await self.wire_counts(server)
        wire = wire_after.minus(wire_before) if wire_after is not None and wire_before is not None else None
        others = max(0.0, machine_seconds - cpu_seconds - db_seconds - harness_seconds)
        capacity = result.wall_seconds * len(os.sched_getaffinity(0))
        hwm_peak = max(procstat.peak_rss_bytes(pid) for pid in workers) if hwm_reset else 0
        model_calls = await self.model.model_calls(self.control)
        attempted = max(1, result.turns + sum(result.failures.values()))
        per_turn = max(1, result.turns)
        return Measurement(
            scenario=scenario.name,
            server=server.target,
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
            protocol=protocol,
            chunks=scenario.model.chunks,
            model_ms=scenario.model.latency_ms,
            first_text_p50_ms=result.first_text_percentile_ms(50),
            first_text_p95_ms=result.first_text_percentile_ms(95),
            transactions_per_turn=wire.transactions / per_turn if wire else math.nan,
            statements_per_turn=wire.statements / per_turn if wire else math.nan,
            round_trips_per_turn=wire.round_trips / per_turn if wire else math.nan,
            baseline=scenario.baseline,
        )

    @staticmethod
    def request_timeout(scenario: Scenario) -> float:
        """How long a client waits for a reply (or, streaming, for the next bytes): a minute beyond the model."""
        return 60.0 + scenario.model.latency_ms / 1000

    async def warm_up(self, server: Server, scenarios: Sequence[Scenario] = ()) -> None:
        """Imports, pools, prepared statements and every connection a scenario will use, before measuring.

        The second round holds ``warm_up_users`` turns open at once behind a slow model, so the client's
        connections, the server's connections to the model and its database pool all reach their size;
        then a short round of each kind of turn (model mode and protocol) that ``scenarios`` will ask for.
        """
        rounds = [
            Scenario("warmup0", "warm-up", 16, 3),
            Scenario("warmup1", "warm-up", self.warm_up_users, 2, ModelSetup(100)),
        ]
        kinds = dict.fromkeys((s.model.mode, s.protocol_for(server.target)) for s in scenarios)
        kinds.pop(("text", "json"), None)
        for index, (mode, protocol) in enumerate(kinds, start=2):
            # busy-reject's second request goes BUSY_PAUSE_SECONDS after the turn's: its turn must still run then
            latency = 2000 * BUSY_PAUSE_SECONDS if protocol == "busy-reject" else 100
            model = ModelSetup(latency, mode, reply_chars=200, chunks=10)
            rounds.append(Scenario(f"warmup{index}", "warm-up", 8, 2, model, protocol=protocol))
        for scenario in rounds:
            await self.model.configure(self.control, scenario.model)
            uids = [user_id(server.target, scenario, i) for i in range(scenario.users)]
            result = await run_load(
                server.base_url,
                [VirtualUser(uid, mint_token(self.secret, uid)) for uid in uids],
                scenario.turns,
                deadline_seconds=self.deadline(scenario),
                check=reply_check(scenario.tool_calls_per_turn),
                client_factory=functools.partial(user_turns, scenario.protocol),
            )
            if result.failures or result.timed_out:
                raise RuntimeError(
                    f"{server.name} failed its warm-up ({scenario.model.mode}, {scenario.protocol}): "
                    f"{dict(result.failures)}\n{server.log_tail()}"
                )


def saturation_notes(scenarios: Sequence[Scenario], measurements: Sequence[Measurement]) -> list[str]:
    """Say where a scenario with a model latency was bound by CPU rather than by the model.

    N users behind a model that takes L seconds can make at most N / L turns a second; a server
    far below that was queueing for CPU, so its latencies measure throughput, not waiting.
    """
    notes = []
    by_name = {s.name: s for s in scenarios}
    for m in measurements:
        scenario = by_name.get(m.scenario)
        if scenario is None or scenario.model.latency_ms <= 0:
            continue
        demand = scenario.users / (scenario.model.latency_ms / 1000)
        if m.turns_per_second < SATURATED_SHARE * demand:
            notes.append(
                f"{m.scenario} on {m.server} was CPU-bound: {scenario.users} users behind a "
                f"{scenario.model.latency_ms:g} ms model could make up to {demand:.0f} turns/s, the machine served "
                f"{m.turns_per_second:.0f}; its latencies are mostly queueing for CPU, not waiting on the model."
            )
    return notes


def counted_users(secret: str, server: str, turns: int) -> list[VirtualUser]:
    """New users for one valgrind run (``bench/instructions.py``), each starting a conversation of their own."""
    return [
        VirtualUser(uid, mint_token(secret, uid)) for uid in (f"{server}-counted-{turns}-{i}" for i in range(USERS))
    ]
