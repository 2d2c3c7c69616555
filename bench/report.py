"""The benchmark's figures as Markdown: the results table, chatcore's ratios to the floor, the targets, and the
whole of ``docs/performance.md`` around them (keeping its hand-written tuning log across reruns)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FLOOR = "floor"
CHATCORE = "chatcore"
DISTURBED_PERCENT = 10.0
"""Above this share of the machine used by processes outside the benchmark, a measurement is flagged."""
RUNTIME_LIMIT_SECONDS = 600.0
"""What a whole ``make bench`` run may take (issue 7)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One scenario against one server."""

    scenario: str
    server: str
    users: int
    turns_per_user: int
    ok: int
    failures: dict[str, int]
    timed_out: bool
    wall_seconds: float
    turns_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms_per_turn: float
    db_cpu_ms_per_turn: float
    peak_rss_mb: float
    model_calls_per_turn: float
    rounds: int = 1
    """Runs of users × turns, each by new users, pooled (``Scenario.rounds``)."""
    background_cpu_percent: float = 0.0
    """The machine's CPU used by processes outside the benchmark, as a share of all its cores."""
    harness_cpu_ms_per_turn: float = 0.0
    """CPU of the load generator and the fake model per turn: what the harness itself takes from the machine."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass(frozen=True, slots=True)
class Target:
    """A figure from the issue, its limit and whether this run met it."""

    name: str
    measured: float
    limit: float
    at_most: bool
    unit: str = "×"

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def render_row(self) -> str:
        sign = "≤" if self.at_most else "≥"
        verdict = "**met**" if self.met else "**NOT met**"
        return f"| {self.name} | {_num(self.measured)}{self.unit} | {sign} {_num(self.limit)}{self.unit} | {verdict} |"


@dataclass(slots=True)
class Report:
    command: str
    machine: dict[str, str]
    measurements: list[Measurement] = field(default_factory=list)
    runtime_seconds: float = math.nan
    profile: str | None = None
    notes: list[str] = field(default_factory=list)
    instructions: dict[str, float] = field(default_factory=dict)
    """Instructions per turn by server, counted under valgrind (``bench/instructions.py``); empty when not run."""

    def get(self, scenario: str, server: str) -> Measurement | None:
        for measurement in self.measurements:
            if measurement.scenario == scenario and measurement.server == server:
                return measurement
        return None

    def ratio(self, scenario: str, figure: Callable[[Measurement], float]) -> float:
        """chatcore's figure divided by the floor's, in one scenario; NaN when either is missing."""
        ours, floor = self.get(scenario, CHATCORE), self.get(scenario, FLOOR)
        if ours is None or floor is None:
            return math.nan
        return _divide(figure(ours), figure(floor))

    def targets(self, runtime_limit_seconds: float) -> list[Target]:
        targets = [
            Target(
                "overhead: server CPU per turn, chatcore ÷ floor",
                self.ratio("overhead", lambda m: m.server_cpu_ms_per_turn),
                1.5,
                at_most=True,
            ),
            Target(
                "overhead: turns/s, chatcore ÷ floor", self.ratio("overhead", lambda m: m.turns_per_second), 0.7, False
            ),
            Target("slow model: p95, chatcore ÷ floor", self.ratio("slow-model", lambda m: m.p95_ms), 1.2, True),
        ]
        long, fresh = self.get("history-800", CHATCORE), self.get("history-fresh", CHATCORE)
        targets.append(
            Target(
                "long history: chatcore p95, 800-message ÷ fresh conversations",
                _divide(long.p95_ms, fresh.p95_ms) if long and fresh else math.nan,
                1.2,
                True,
            )
        )
        slow = self.get("slow-model", CHATCORE)
        targets.append(
            Target(
                "slow model: chatcore peak RSS per worker",
                slow.peak_rss_mb if slow else math.nan,
                150,
                True,
                " MB",
            )
        )
        targets.append(Target("`make bench` runtime", self.runtime_seconds, runtime_limit_seconds, True, " s"))
        return targets

    def render(self, runtime_limit_seconds: float) -> str:
        lines = [
            "## Results",
            "",
            "| scenario | server | (rounds ×) users × turns | ok | failed | turns/s | p50 ms | p95 ms | p99 ms "
            "| server CPU ms/turn | PostgreSQL CPU ms/turn | peak RSS MB/worker | model calls/turn | other load |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in self.measurements:
            failed = str(m.failed) + (" (timed out)" if m.timed_out else "")
            shape = (
                f"{m.rounds} × {m.users} × {m.turns_per_user}" if m.rounds > 1 else f"{m.users} × {m.turns_per_user}"
            )
            lines.append(
                f"| {m.scenario} | {m.server} | {shape} | {m.ok} | {failed} "
                f"| {m.turns_per_second:.1f} | {m.p50_ms:.1f} | {m.p95_ms:.1f} | {m.p99_ms:.1f} "
                f"| {m.server_cpu_ms_per_turn:.2f} | {m.db_cpu_ms_per_turn:.2f} | {m.peak_rss_mb:.1f} "
                f"| {m.model_calls_per_turn:.2f} | {m.background_cpu_percent:.0f}% |"
            )
        disturbed = [m for m in self.measurements if m.background_cpu_percent > DISTURBED_PERCENT]
        if disturbed:
            lines += [
                "",
                f"**Disturbed:** other processes used more than {DISTURBED_PERCENT:g}% of the machine during "
                + ", ".join(f"{m.scenario}/{m.server}" for m in disturbed)
                + "; their turns/s and latencies are not representative (CPU per turn still is, roughly).",
            ]
        failures = [(m, m.failures) for m in self.measurements if m.failures]
        if failures:
            lines += ["", "Failures: " + "; ".join(f"{m.scenario}/{m.server}: {dict(f)}" for m, f in failures)]
        lines += [
            "",
            "## chatcore ÷ floor",
            "",
            "| scenario | turns/s | p50 | p95 | p99 | server CPU/turn | PostgreSQL CPU/turn | peak RSS |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        figures: Sequence[Callable[[Measurement], float]] = (
            lambda m: m.turns_per_second,
            lambda m: m.p50_ms,
            lambda m: m.p95_ms,
            lambda m: m.p99_ms,
            lambda m: m.server_cpu_ms_per_turn,
            lambda m: m.db_cpu_ms_per_turn,
            lambda m: m.peak_rss_mb,
        )
        for scenario in dict.fromkeys(m.scenario for m in self.measurements):
            cells = " | ".join(f"{_num(self.ratio(scenario, f))}×" for f in figures)
            lines.append(f"| {scenario} | {cells} |")
        floor_long, floor_fresh = self.get("history-800", FLOOR), self.get("history-fresh", FLOOR)
        lines += [
            "",
            "## Targets",
            "",
            "| target | measured | limit | result |",
            "|---|--:|--:|---|",
            *(t.render_row() for t in self.targets(runtime_limit_seconds)),
        ]
        if floor_long and floor_fresh:
            lines += [
                "",
                "For reference, the floor's own p95 with 800-message ÷ fresh conversations: "
                f"{_num(_divide(floor_long.p95_ms, floor_fresh.p95_ms))}×.",
            ]
        if self.instructions:
            floor = self.instructions.get(FLOOR, math.nan)
            lines += [
                "",
                "## Instructions per turn",
                "",
                "Counted by valgrind (cachegrind, no cache simulation) in the server process, as the difference "
                "between runs of 20 and 120 sequential turns by 4 users with the instant model "
                "(`bench/instructions.py`): the same for the same code whatever else the machine is doing, "
                "unlike the CPU times above. Not a target; the CPU ratio is usually below this one, since "
                "both servers also spend kernel time on the same sockets.",
                "",
                "| server | million instructions per turn | ÷ floor |",
                "|---|--:|--:|",
                *(
                    f"| {server} | {count / 1e6:.2f} | {_num(_divide(count, floor))}× |"
                    for server, count in self.instructions.items()
                ),
            ]
        return "\n".join(lines)


def document(report: Report) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in report.machine.items())
    parts = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench.run`, this page by `bench/report.py`); rerun it to refresh this "
        "page. It measures chatcore (`chatcore serve` on PostgreSQL, OpenAI wire format) against *the floor*: "
        "`bench/floor.py`, a bare ASGI "
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


def _divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
