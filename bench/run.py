"""``make bench``'s command line: chatcore against the floor, scenario by scenario, on PostgreSQL.

It creates a fresh database and migrates it, starts the fake model, the floor and ``chatcore serve``
as subprocesses on 127.0.0.1, warms both servers up, runs every scenario against both (one server at a
time, so each has the machine to itself), and measures the server process tree's CPU, its peak RSS,
PostgreSQL's CPU and the latency the clients saw. It prints the table and writes ``docs/performance.md``.

    python -m bench.run                      # the issue's sizes, about two minutes on 2 cores
    python -m bench.run --scale 0.25         # a quick look
    python -m bench.run --targets floor      # the floor alone (e.g. while chatcore is broken)

Every loop is bounded: users × turns per scenario, a deadline per scenario, a timeout per request
and per start-up; it talks to 127.0.0.1 only. The parts: ``scenarios`` (what runs), ``servers``
(the processes), ``database`` (created, migrated, seeded), ``measure`` (one scenario on one server),
``report`` (the Markdown), ``machine`` (what was measured on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench import procstat
from bench.database import analyze, database_dsn, fresh_database, migrate, require_loopback, seed_conversations
from bench.instructions import instructions_per_turn, valgrind
from bench.load import user_client
from bench.machine import machine_facts
from bench.measure import MIB, Bench, counted_users, saturation_notes
from bench.profile import profile_overhead, py_spy
from bench.report import CHATCORE, FLOOR, RUNTIME_LIMIT_SECONDS, Report, document, kept_by_hand
from bench.scenarios import Scenario, scenario_owners, scenarios_from
from bench.servers import REPO, FakeModel, Server, free_port, pool_budget, server_argv, server_env

DEFAULT_OUTPUT = REPO / "docs" / "performance.md"


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name.strip(), value


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
            await analyze(dsn)
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
