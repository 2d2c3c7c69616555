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
import dataclasses
import functools
import math
import os
import resource
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import httpx

from bench.database import (
    ServerFacts,
    analyze,
    database_dsn,
    fresh_database,
    migrate,
    require_loopback,
    seed_conversations,
    server_facts,
)
from bench.instructions import instructions_per_turn, valgrind
from bench.load import user_client
from bench.machine import machine_facts
from bench.measure import Bench, counted_users, saturation_notes
from bench.profile import profile_scenario, py_spy
from bench.report import CHATCORE, FLOOR, RUNTIME_LIMIT_SECONDS, Measurement, Report, document, kept_by_hand
from bench.scenarios import ModelSetup, Scenario, ServerSpec, scenario_owners, scenario_table, select
from bench.servers import (
    REPO,
    FakeModel,
    Fleet,
    Server,
    WireCounterProcess,
    free_port,
    pool_budget,
    server_argv,
    server_env,
)

DEFAULT_OUTPUT = REPO / "docs" / "performance.md"


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name.strip(), value


async def run(args: argparse.Namespace, argv: Sequence[str]) -> Report:
    started = time.perf_counter()
    require_loopback(args.admin_dsn)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    for name in targets:
        server_argv(name, 0, workers=1)  # refuses an unknown target before anything starts
    chosen = select(scenario_table(args), args.scenarios)
    if args.wire_count != "streamed":
        chosen = [dataclasses.replace(s, counted=args.wire_count == "all") for s in chosen]
    scenarios = [s for s in chosen if s.servers(targets)]
    if not scenarios:
        raise SystemExit("none of the chosen scenarios runs on the chosen targets")
    plan = [s.servers(targets) for s in scenarios]
    specs = list(dict.fromkeys(spec for specs in plan for spec in specs))
    log_dir = Path(args.log_dir)
    secret = secrets.token_urlsafe(32)
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(args.admin_dsn, args.keep_db))
        dsn = database_dsn(args.admin_dsn, database)
        print(f"bench: database {database}; logs in {log_dir}", flush=True)
        await migrate(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
        postgres = await server_facts(args.admin_dsn)

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

        counter: WireCounterProcess | None = None
        listeners = {spec.slug: free_port() for spec in specs if spec.counted}
        if listeners:
            counter = await start_wire_counter(args.admin_dsn, listeners, log_dir, control)
            stack.push_async_callback(counter.stop)

        def database_for(spec: ServerSpec) -> str:
            return database_dsn(args.admin_dsn, database, port=listeners.get(spec.slug))

        pool = pool_budget(postgres.free_connections, Fleet.concurrency(plan), args.workers)

        def env_for(spec: ServerSpec) -> dict[str, str]:
            env = server_env(database_for(spec), secret, model_port, args.chatcore_log_level, pool)
            return env | dict(args.chatcore_env) | dict(spec.settings) if spec.target == CHATCORE else env

        def make(spec: ServerSpec) -> Server:
            port = free_port()
            argv = server_argv(spec.target, port, workers=args.workers)
            server = Server(spec.name, argv, env_for(spec), port, log_dir, workers=args.workers, spec=spec)
            stack.push_async_callback(server.stop)
            return server

        connection = await asyncpg.connect(dsn)
        stack.push_async_callback(connection.close)
        bench = Bench(args, secret, model, control, connection, database, counter, warm_up_users(scenarios))
        served = {spec: [s for s, specs in zip(scenarios, plan, strict=True) if spec in specs] for spec in specs}
        fleet = Fleet(plan, make, lambda server: bench.warm_up(server, served[server.spec]), control)
        stack.push_async_callback(fleet.stop_all)

        seeded: dict[tuple[str, str], dict[str, str]] = {}
        for scenario, scenario_specs in zip(scenarios, plan, strict=True):
            for spec in scenario_specs if scenario.seeded_messages else ():
                owners = [uid for round_ in scenario_owners(spec.target, scenario) for uid in round_]
                seeded[spec.target, scenario.name] = await seed_conversations(dsn, owners, scenario.seeded_messages)

        report = Report(
            command=shlex.join(["python", "-m", "bench.run", *argv]), machine=machine_facts(postgres.version)
        )
        profiled = {name.strip() for name in args.profile_scenarios.split(",") if name.strip()}
        if not (args.profile or (args.profile is None and py_spy() is not None)):
            profiled = set()
        for index, scenario in enumerate(scenarios):
            servers = await fleet.servers_for(index)
            await analyze(connection)
            for server in servers if index % 2 == 0 else servers[::-1]:
                print(f"bench: {scenario.name} ({scenario.description}) on {server.name}", flush=True)
                measurement = await bench.measure(server, scenario, seeded.get((server.target, scenario.name)))
                report.measurements.append(measurement)
                print(f"bench:   {progress_line(measurement)}", flush=True)
            chatcore = next((s for s in servers if s.target == CHATCORE), None)
            if scenario.name in profiled and chatcore is not None:
                print(f"bench: profiling chatcore in {scenario.name} (py-spy)", flush=True)
                report.profiles.append(await profile_scenario(bench, chatcore, profiled_load(scenario), log_dir))
            await fleet.release_after(index)

        if args.instructions or (args.instructions is None and valgrind() is not None):
            await model.configure(control, ModelSetup())
            for target in targets:
                print(f"bench: instructions per turn on {target} (valgrind)", flush=True)
                report.instructions[target] = await instructions_per_turn(
                    target,
                    functools.partial(server_argv, target, workers=1),
                    env_for(ServerSpec(target)),
                    functools.partial(counted_users, secret, target),
                    free_port,
                    log_dir,
                    REPO,
                )
                print(f"bench:   {report.instructions[target] / 1e6:.2f} M instructions/turn", flush=True)

        report.notes.extend(run_notes(pool, postgres, fleet.startup_rss_mb))
        report.notes.extend(saturation_notes(scenarios, report.measurements))
    report.runtime_seconds = time.perf_counter() - started
    return report


WIRE_COUNTER_NICENESS = -10
"""The counting proxy's scheduling priority (root only): it adds a hop to every database round trip of the
servers it counts, and on a machine short of CPU a hop that waits for its turn would hold their connections
longer; it needs little CPU, so it may as well get it first."""


PROFILED_USERS = 50
"""Users of a profiled run behind a slow model: enough samples, a quarter of a streaming scenario's time."""


def profiled_load(scenario: Scenario) -> Scenario:
    """The load of the extra run a profile samples: the scenario's own, with at most ``PROFILED_USERS`` users
    when the model takes time (shares of CPU hardly depend on how many wait for it; the run's length does)."""
    if scenario.model.latency_ms <= 0:
        return scenario
    return dataclasses.replace(scenario, users=min(scenario.users, PROFILED_USERS))


async def start_wire_counter(
    admin_dsn: str, listeners: dict[str, int], log_dir: Path, control: httpx.AsyncClient
) -> WireCounterProcess:
    parts = urlsplit(admin_dsn)
    port = free_port()
    argv = [sys.executable, "-m", "bench.pgwire", "--upstream", f"{parts.hostname}:{parts.port or 5432}"]
    argv += [f"--listen={name}={listen}" for name, listen in listeners.items()]
    counter = WireCounterProcess("pgwire", [*argv, "--port", str(port)], dict(os.environ), port, log_dir)
    await counter.start(control)
    with contextlib.suppress(PermissionError):  # a measuring hop should not wait for CPU: ahead of the rest if allowed
        os.setpriority(os.PRIO_PROCESS, counter.pid, WIRE_COUNTER_NICENESS)
    return counter


def warm_up_users(scenarios: Sequence[Scenario]) -> int:
    """Concurrent users of the warm-up's slow round: enough to open every connection the JSON scenarios will use
    (open streams are left out: a thousand warm-up turns would cost more than the connections they open)."""
    return min(200, max((s.users for s in scenarios if s.protocol == "json"), default=32))


def progress_line(m: Measurement) -> str:
    wire = f", {m.transactions_per_turn:.1f} transactions/turn" if not math.isnan(m.transactions_per_turn) else ""
    first = f", first text p95 {m.first_text_p95_ms:.0f} ms" if m.protocol != "json" else ""
    return (
        f"{m.turns_per_second:.1f} turns/s, p95 {m.p95_ms:.1f} ms{first}, {m.server_cpu_ms_per_turn:.2f} CPU ms/turn"
        f"{wire}, {m.failed} failed (harness {m.harness_cpu_ms_per_turn:.2f} CPU ms/turn, "
        f"other load {m.background_cpu_percent:.0f}%)"
    )


def run_notes(pool: tuple[int, int] | None, postgres: ServerFacts, startup_rss_mb: dict[str, float]) -> list[str]:
    notes = []
    if pool is not None:
        notes.append(
            f"Database pools shrunk to {pool[0]} + {pool[1]} overflow connections per worker (every server) "
            f"to fit the {postgres.free_connections} connections PostgreSQL had free."
        )
    if startup_rss_mb:
        notes.append(
            "RSS per worker after start-up, before any request: "
            + ", ".join(f"{name} {mib:.0f} MB" for name, mib in startup_rss_mb.items())
            + "."
        )
    if "pg_stat_statements" not in postgres.preloaded:
        notes.append(
            f"pg_stat_statements is not loaded on this PostgreSQL (shared_preload_libraries = "
            f"'{postgres.preloaded}'); loading it takes a restart of a server other clients share, so statements "
            "and transactions are counted on the wire (`bench/pgwire.py`)."
        )
    return notes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="chatcore's benchmark, against the floor.")
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--targets", default=f"{FLOOR},{CHATCORE}", help="servers to measure, comma-separated")
    parser.add_argument(
        "--scenarios",
        default="*",
        help="comma-separated names or shell patterns, e.g. 'overhead,streaming*' (default: all; see --list)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
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
    parser.add_argument("--streaming-users", type=int, default=200)
    parser.add_argument("--streaming-turns", type=int, default=3)
    parser.add_argument("--streaming-ms", type=float, default=2000, help="how long the model streams a reply")
    parser.add_argument("--streaming-chars", type=int, default=1600, help="characters in a streamed reply")
    parser.add_argument("--streaming-chunks", type=int, default=100)
    parser.add_argument("--streaming-long-chunks", type=int, default=400)
    parser.add_argument("--open-streams", type=int, default=1000, help="users of the open-streams scenario")
    parser.add_argument(
        "--open-streams-seconds", type=float, default=30, help="how long the model streams there (quick: 5)"
    )
    parser.add_argument("--open-streams-chunks", type=int, default=30)
    parser.add_argument(
        "--rate-limit", default="1000000/minute", help="CHATCORE_RATE_LIMIT of overhead-rate-limit (never reached)"
    )
    parser.add_argument(
        "--token-budget",
        default="1000000000000/day",
        help="CHATCORE_USER_TOKEN_BUDGET of overhead-budget (never reached)",
    )
    parser.add_argument(
        "--scenario-timeout",
        type=float,
        default=300.0,
        help="seconds one scenario may take beyond its users' model time",
    )
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
        help="profile chatcore with py-spy in an extra run of some scenarios (default: when py-spy is installed)",
    )
    parser.add_argument(
        "--profile-scenarios", default="overhead,streaming-sse", help="the scenarios to profile, comma-separated"
    )
    parser.add_argument(
        "--wire-count",
        choices=("streamed", "all", "none"),
        default="streamed",
        help="in which scenarios to count each server's PostgreSQL statements and transactions through "
        "bench/pgwire.py (default: the streamed ones; the proxy costs the machine ~50 us of CPU a round trip)",
    )
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Markdown file to write ('-' for none)")
    parser.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "chatcore-bench"))
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database afterwards")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.workers < 1 or args.scenario_timeout <= 0:
        parser.error("--scale and --scenario-timeout must be positive and --workers at least 1")
    if args.history_rounds < 1:
        parser.error("--history-rounds must be at least 1")
    for name in ("overhead", "slow", "tool", "history", "streaming"):
        if getattr(args, f"{name}_users") < 1 or getattr(args, f"{name}_turns") < 1:
            parser.error(f"--{name}-users and --{name}-turns must be at least 1")
    if args.history_messages < 4:
        parser.error("--history-messages must be at least 4")
    counts = (args.open_streams, args.streaming_chars, args.streaming_chunks, args.streaming_long_chunks)
    if min(counts) < 1 or args.open_streams_chunks < 1:
        parser.error("--open-streams, --streaming-chars and the --*-chunks options must be at least 1")
    if args.streaming_ms <= 0 or args.open_streams_seconds <= 0:
        parser.error("--streaming-ms and --open-streams-seconds must be positive")
    return args


OPEN_FILES_WANTED = 65536
"""Open-streams holds thousands of sockets in each process (client, server, model); children inherit the limit."""


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(OPEN_FILES_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        for scenario in scenario_table(args):
            print(
                f"{scenario.name:22} {scenario.users} × {scenario.turns}, {scenario.protocol}: {scenario.description}"
            )
        return 0
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    raise_open_file_limit()
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
