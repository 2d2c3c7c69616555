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
STREAMED_PROTOCOLS = frozenset({"sse", "ai-sdk", "ag-ui"})
r"""The ``TurnProtocol``\ s whose replies stream (their first text is the first ``delta``, not the whole reply)."""
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
    """CPU of the load generator, the fake model and the counting proxy per turn: what the harness takes."""
    protocol: str = "json"
    """How turns were asked for: ``json`` (one reply) or ``sse`` (a stream of events)."""
    chunks: int = 1
    """Pieces a streamed model reply came in (the scenario's model; JSON turns get it whole)."""
    model_ms: float = 0.0
    """How long one model reply took (streamed or not)."""
    first_text_p50_ms: float = math.nan
    """When the first text arrived: the first ``delta`` event of a stream, the whole reply for JSON."""
    first_text_p95_ms: float = math.nan
    transactions_per_turn: float = math.nan
    """PostgreSQL transactions (commits and rollbacks, as ``pg_stat_database`` counts them) the server's
    connections ran per successful turn, counted on the wire (``bench/pgwire.py``); NaN when not counted."""
    statements_per_turn: float = math.nan
    """Statements (``Execute`` and simple ``Query`` messages) the server sent per successful turn."""
    round_trips_per_turn: float = math.nan
    """Round trips to PostgreSQL (a ``Sync`` or ``Query`` answered by ``ReadyForQuery``) per successful turn."""
    baseline: str | None = None
    """The scenario of the plain JSON turn this one is compared with (``Scenario.baseline``)."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def errors(self) -> int:
        """Turns asked for that did not succeed: failed, or never finished (timed out)."""
        return self.rounds * self.users * self.turns_per_user - self.ok

    @property
    def streamed(self) -> bool:
        """Part of the streamed-turn scenarios: asked for as a stream, or its model streams when asked to."""
        return self.protocol in STREAMED_PROTOCOLS or self.chunks > 1


@dataclass(frozen=True, slots=True)
class Target:
    """A figure from the issue, its limit and whether this run met it."""

    name: str
    measured: float
    limit: float
    at_most: bool
    unit: str = "×"
    digits: int = 2

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def render_row(self) -> str:
        sign = "≤" if self.at_most else "≥"
        verdict = "**met**" if self.met else "**NOT met**"
        measured, limit = _num(self.measured, self.digits), _num(self.limit, self.digits)
        return f"| {self.name} | {measured}{self.unit} | {sign} {limit}{self.unit} | {verdict} |"


@dataclass(slots=True)
class Report:
    command: str
    machine: dict[str, str]
    measurements: list[Measurement] = field(default_factory=list)
    runtime_seconds: float = math.nan
    profiles: list[str] = field(default_factory=list)
    """Markdown sections of py-spy profiles (``bench/profile.py``), one per profiled scenario."""
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

    def figure(self, scenario: str, server: str, value: Callable[[Measurement], float]) -> float:
        measurement = self.get(scenario, server)
        return value(measurement) if measurement is not None else math.nan

    def targets(self, runtime_limit_seconds: float) -> list[Target]:
        """The issues' targets whose scenarios ran (all of them after a full run), and the runtime's."""

        def cpu(m: Measurement) -> float:
            return m.server_cpu_ms_per_turn

        def transactions(m: Measurement) -> float:
            return m.transactions_per_turn

        sse = self.get("streaming-sse", CHATCORE)
        long_sse = self.figure("streaming-long-sse", CHATCORE, transactions)
        candidates: list[tuple[tuple[str, ...], Target]] = [
            (
                ("overhead",),
                Target("overhead: server CPU per turn, chatcore ÷ floor", self.ratio("overhead", cpu), 1.5, True),
            ),
            (
                ("overhead",),
                Target(
                    "overhead: turns/s, chatcore ÷ floor",
                    self.ratio("overhead", lambda m: m.turns_per_second),
                    0.7,
                    False,
                ),
            ),
            (
                ("slow-model",),
                Target("slow model: p95, chatcore ÷ floor", self.ratio("slow-model", lambda m: m.p95_ms), 1.2, True),
            ),
            (
                ("history-800", "history-fresh"),
                Target(
                    "long history: chatcore p95, 800-message ÷ fresh conversations",
                    _divide(
                        self.figure("history-800", CHATCORE, lambda m: m.p95_ms),
                        self.figure("history-fresh", CHATCORE, lambda m: m.p95_ms),
                    ),
                    1.2,
                    True,
                ),
            ),
            (
                ("slow-model",),
                Target(
                    "slow model: chatcore peak RSS per worker",
                    self.figure("slow-model", CHATCORE, lambda m: m.peak_rss_mb),
                    150,
                    True,
                    " MB",
                    0,
                ),
            ),
            (
                ("streaming-sse", "streaming-json"),
                Target(
                    "streaming: server CPU per turn, chatcore SSE ÷ chatcore JSON",
                    _divide(self.figure("streaming-sse", CHATCORE, cpu), self.figure("streaming-json", CHATCORE, cpu)),
                    2.0,
                    True,
                ),
            ),
            (
                ("streaming-sse",),
                Target(
                    "streaming: server CPU per SSE turn, chatcore ÷ floor", self.ratio("streaming-sse", cpu), 1.5, True
                ),
            ),
            (
                ("streaming-sse",),
                Target(
                    "streaming: chatcore first text p95",
                    self.figure("streaming-sse", CHATCORE, lambda m: m.first_text_p95_ms),
                    300,
                    True,
                    " ms",
                    0,
                ),
            ),
            (
                ("streaming-sse",),
                Target(
                    "streaming: chatcore whole turn p95 (1.2 × the model's own streaming time)",
                    sse.p95_ms if sse else math.nan,
                    1.2 * sse.model_ms if sse else math.nan,
                    True,
                    " ms",
                    0,
                ),
            ),
            (
                ("streaming-sse",),
                Target(
                    "streaming: PostgreSQL transactions per chatcore SSE turn",
                    self.figure("streaming-sse", CHATCORE, transactions),
                    6,
                    True,
                    "",
                    1,
                ),
            ),
            (
                ("streaming-long-sse", "streaming-sse"),
                Target(
                    "streaming: transactions per chatcore SSE turn, 400 chunks − 100 chunks (either way)",
                    abs(long_sse - self.figure("streaming-sse", CHATCORE, transactions)),
                    1,
                    True,
                    "",
                    1,
                ),
            ),
            (
                ("open-streams",),
                Target(
                    "open streams: chatcore turns that failed or never finished",
                    self.figure("open-streams", CHATCORE, lambda m: m.errors),
                    0,
                    True,
                    "",
                    0,
                ),
            ),
            (
                ("open-streams",),
                Target(
                    "open streams: chatcore peak RSS per worker",
                    self.figure("open-streams", CHATCORE, lambda m: m.peak_rss_mb),
                    256,
                    True,
                    " MB",
                    0,
                ),
            ),
            (
                ("overhead-rate-limit",),
                Target(
                    "overhead with a rate limit and INFO logging: server CPU per turn, chatcore ÷ floor",
                    self.ratio("overhead-rate-limit", cpu),
                    1.5,
                    True,
                ),
            ),
            (
                ("overhead-budget",),
                Target(
                    "overhead with a token budget: server CPU per turn, chatcore ÷ floor",
                    self.ratio("overhead-budget", cpu),
                    1.5,
                    True,
                ),
            ),
        ]
        ran = {m.scenario for m in self.measurements}
        targets = [target for needs, target in candidates if ran.intersection(needs)]
        targets.append(Target("`make bench` runtime", self.runtime_seconds, runtime_limit_seconds, True, " s"))
        return targets

    def render(self, runtime_limit_seconds: float) -> str:
        sections = [
            self._results(),
            self._ratios(),
            self._streamed(),
            self._paths(),
            self._targets(runtime_limit_seconds),
            self._instructions(),
        ]
        return "\n\n".join("\n".join(section) for section in sections if section)

    def _results(self) -> list[str]:
        lines = [
            "## Results",
            "",
            "| scenario | server | (rounds ×) users × turns | ok | failed | turns/s | p50 ms | p95 ms | p99 ms "
            "| server CPU ms/turn | PostgreSQL CPU ms/turn | PostgreSQL transactions/turn | statements/turn "
            "| peak RSS MB/worker | model calls/turn | other load |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in self.measurements:
            failed = str(m.failed) + (" (timed out)" if m.timed_out else "")
            shape = (
                f"{m.rounds} × {m.users} × {m.turns_per_user}" if m.rounds > 1 else f"{m.users} × {m.turns_per_user}"
            )
            lines.append(
                f"| {m.scenario} | {m.server} | {shape} | {m.ok} | {failed} "
                f"| {m.turns_per_second:.1f} | {m.p50_ms:.1f} | {m.p95_ms:.1f} | {m.p99_ms:.1f} "
                f"| {m.server_cpu_ms_per_turn:.2f} | {m.db_cpu_ms_per_turn:.2f} "
                f"| {_num(m.transactions_per_turn, 1)} | {_num(m.statements_per_turn, 1)} | {m.peak_rss_mb:.1f} "
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
        return lines

    def _ratios(self) -> list[str]:
        lines = [
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
        return lines

    def _streamed(self) -> list[str]:
        streamed = [m for m in self.measurements if m.streamed]
        if not streamed:
            return []
        lines = [
            "## Streamed turns",
            "",
            "First text: the first `delta` event of a stream; for a JSON turn, the whole reply.",
            "",
            "| scenario | server | turns as | users × turns | ok | turns/s | first text p50 / p95 ms "
            "| whole turn p50 / p95 ms | server CPU ms/turn | PostgreSQL transactions/turn | statements/turn "
            "| peak RSS MB/worker |",
            "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in streamed:
            lines.append(
                f"| {m.scenario} | {m.server} | {m.protocol.upper()} | {m.users} × {m.turns_per_user} | {m.ok} "
                f"| {m.turns_per_second:.1f} | {_num(m.first_text_p50_ms, 0)} / {_num(m.first_text_p95_ms, 0)} "
                f"| {m.p50_ms:.0f} / {m.p95_ms:.0f} | {m.server_cpu_ms_per_turn:.2f} "
                f"| {_num(m.transactions_per_turn, 1)} | {_num(m.statements_per_turn, 1)} | {m.peak_rss_mb:.1f} |"
            )
        return lines

    def _paths(self) -> list[str]:
        paths = [m for m in self.measurements if m.server == CHATCORE and m.baseline is not None]
        if not paths:
            return []
        lines = [
            "## Paths a request can take, against the plain JSON turn",
            "",
            "chatcore's server CPU per turn on each path, divided by its plain JSON turn's (the same model and load, "
            "same run) and by the floor's on the same path.",
            "",
            "| path | plain JSON turn | server CPU/turn ÷ plain JSON turn | ÷ floor, same path "
            "| PostgreSQL transactions/turn (plain JSON turn) | round trips/turn (plain JSON turn) |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for m in paths:
            assert m.baseline is not None
            plain_cpu = self.figure(m.baseline, CHATCORE, lambda x: x.server_cpu_ms_per_turn)
            plain_transactions = self.figure(m.baseline, CHATCORE, lambda x: x.transactions_per_turn)
            plain_round_trips = self.figure(m.baseline, CHATCORE, lambda x: x.round_trips_per_turn)
            lines.append(
                f"| {m.scenario} | {m.baseline} | {_num(_divide(m.server_cpu_ms_per_turn, plain_cpu))}× "
                f"| {_num(self.ratio(m.scenario, lambda x: x.server_cpu_ms_per_turn))}× "
                f"| {_num(m.transactions_per_turn, 1)} ({_num(plain_transactions, 1)}) "
                f"| {_num(m.round_trips_per_turn, 1)} ({_num(plain_round_trips, 1)}) |"
            )
        return lines

    def _targets(self, runtime_limit_seconds: float) -> list[str]:
        lines = [
            "## Targets",
            "",
            "| target | measured | limit | result |",
            "|---|--:|--:|---|",
            *(t.render_row() for t in self.targets(runtime_limit_seconds)),
        ]
        floor_long, floor_fresh = self.get("history-800", FLOOR), self.get("history-fresh", FLOOR)
        if floor_long and floor_fresh:
            lines += [
                "",
                "For reference, the floor's own p95 with 800-message ÷ fresh conversations: "
                f"{_num(_divide(floor_long.p95_ms, floor_fresh.p95_ms))}×.",
            ]
        return lines

    def _instructions(self) -> list[str]:
        if not self.instructions:
            return []
        floor = self.instructions.get(FLOOR, math.nan)
        return [
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


def document(report: Report) -> str:
    machine = "\n".join(f"| {key} | {value} |" for key, value in report.machine.items())
    parts = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench.run`, this page by `bench/report.py`); rerun it to refresh this "
        "page. It measures chatcore (`chatcore serve` on PostgreSQL, OpenAI wire format) against *the floor*: "
        "`bench/floor.py`, a bare ASGI app doing the least work a turn needs with raw asyncpg, httpx2 and PyJWT "
        "(decode the token, one query for ownership and the history window, the model call(s), one statement "
        "appending the turn's messages); with `Accept: text/event-stream`, the least a streamed turn needs (the "
        "model's stream read with aiohttp, each text piece forwarded at once as an SSE `delta` event, the turn "
        "stored at the end with the same one statement, then a `done` event). Both talk to the same fake model "
        "(`bench/fake_model.py`) and the same database, one server at a time; chatcore's figures are read as "
        "ratios to the floor's. Model calls: the floor's go through httpx2 on chatcore's `SpreadConnectionPools` "
        "(streamed ones through aiohttp), chatcore's as shipped through aiohttp (`CHATCORE_LLM_HTTP`; "
        "`--chatcore-env CHATCORE_LLM_HTTP=httpx` compares them on the same client).",
        "",
        f"Command: `{report.command}`, total runtime {report.runtime_seconds:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
        machine,
        "",
        "How it is measured: a scenario is N concurrent virtual users (a client and a connection each: httpx for "
        "JSON turns, aiohttp for streamed ones), each sending its turns one after another; turns/s is successful "
        "turns over the scenario's wall time; latency is per request as the client saw it: for a streamed turn, "
        "until its `done` event (*whole turn*), and *first text* until its first `delta` event (for a JSON turn, "
        "the whole reply). Server CPU is user+system time of the server process and its children "
        "(`/proc/<pid>/stat`) over the scenario, divided by the turns; PostgreSQL CPU is the same for the "
        "backends connected to the benchmark's database (background writers and autovacuum not included). "
        "PostgreSQL transactions and statements per turn are counted on the wire in the scenarios marked so "
        "(streaming-json, -sse and -long-sse by default; `--wire-count all` for every one): the server's "
        "connections go through `bench/pgwire.py`, which counts `Execute` and simple `Query` messages "
        "(statements) and the round trips that end a transaction (`ReadyForQuery` with the session idle, as "
        "`xact_commit + xact_rollback` count them; its tests check it against `pg_stat_database`). "
        "`pg_stat_statements` would need a restart of a PostgreSQL other clients share, and `pg_stat_database`'s "
        "counters reach the view up to 10 s late, so deltas around one scenario would mix scenarios. The proxy "
        "costs about 50 µs of CPU a round trip, counted with the harness. Peak RSS is `VmHWM` of each worker, "
        "reset before each scenario. Every server is warmed up first, and the order alternates between scenarios."
        " The load generator, the fake model and PostgreSQL share the machine's cores with the server under test,"
        " so turns/s is a property of the whole machine; CPU per turn is the server's own. *Other load* is the "
        "share of the machine used by processes outside the benchmark during the scenario (from `/proc/stat`); a "
        f"row above {DISTURBED_PERCENT:g}% is flagged. chatcore runs as shipped, logging at INFO "
        "(`--chatcore-log-level` changes it); the floor logs nothing. Expect a few percent of variation between "
        "runs.",
        "",
        "Scenarios (`python -m bench.run --list`; `--scenarios` picks some by name or pattern): **overhead** "
        "instant model; **slow-model** the model takes 500 ms; **tool-turn** every turn is one `add_task` call, "
        "the tool run, then a text answer (two model calls); **history-fresh** / **history-800** the same load "
        "(instant model unless `--history-latency-ms`) on new conversations and on conversations seeded with 800 "
        "stored messages (both servers read a 50-message window), each in rounds (`--history-rounds`): every "
        "round new users on new (or newly seeded) conversations, one round after another, the latencies of all "
        "rounds pooled, so their p95 rests on more turns at the same concurrency and conversation length; "
        "**overhead-rate-limit** the overhead scenario with chatcore configured as in production: "
        "`CHATCORE_RATE_LIMIT` set (high enough never to refuse; the in-process limiter, no Redis) and INFO "
        "logging; **overhead-budget** the overhead scenario with `CHATCORE_USER_TOKEN_BUDGET` set (high enough "
        "never to refuse): one indexed read of the user's window total as each turn starts, the calls counted in "
        "memory; **approval-round-trip** the tool turn with `CHATCORE_APPROVAL_TOOLS=add_task` (chatcore only): "
        "the chat request ends awaiting approval, a second request approves the call, which runs, and the model "
        "answers (a turn is both requests; its first text is the first reply); **busy-reject** slow-model's "
        "turns (chatcore only), each after a user's first with a second request on its conversation 250 ms "
        "later carrying `if_busy: reject`, which must be refused at once (409): the turn is timed as a JSON turn, "
        "its first text is the 409's latency; **streaming-json** / "
        "**streaming-sse** / **streaming-long-sse** 200 users × 3 turns of a model that answers with a "
        "1,600-character echo of the message in 2 s, as JSON turns (one reply) and as SSE turns streamed in 100 "
        "(or 400) chunks spread over those 2 s (the JSON turn is the same for both chunk counts: the model does "
        "not stream to it); **open-streams** 1,000 SSE turns open at once on one worker, the model streaming for "
        "30 s (`--open-streams-seconds`); **ai-sdk-stream** / **ag-ui-stream** streaming-sse's turns through "
        "the frontends' protocols (`POST /api/{user}/ai-sdk/chat`, the AI SDK's UI message stream; `POST "
        "/api/{user}/ag-ui`, AG-UI's events), the floor streaming its own SSE beside them.",
        "",
        report.render(RUNTIME_LIMIT_SECONDS),
    ]
    if report.notes:
        parts += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    for profile in report.profiles:
        parts += ["", profile]
    return "\n".join(parts) + "\n"


KEPT_HEADINGS = ("## Streamed turns: before and after", "## Tuning log")
"""Sections of the output file written by hand (what was changed, the figures and profiles before and after):
kept across runs, after the measured sections, so a rerun refreshes the figures without losing the history."""


def kept_by_hand(previous: str) -> str:
    """The hand-written sections (``KEPT_HEADINGS``, from the first of them on) of the previous output, to end
    the new one with ('' if none)."""
    starts = [found for heading in KEPT_HEADINGS if (found := previous.find("\n" + heading + "\n")) >= 0]
    if not starts:
        return ""
    return "\n" + previous[min(starts) + 1 :].rstrip() + "\n"


def _divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _num(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"
