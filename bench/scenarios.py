"""What ``make bench`` runs: the scenario table, and each scenario's users.

A scenario is a load (users × turns, in rounds), a fake model set up a certain way, the way a turn is
asked for (``protocol``: one JSON reply or a Server-Sent Events stream), the servers it runs on, and
chatcore's settings for it. Every path a request can take gets one entry here, side by side with the
plain JSON turn it is compared with (``baseline``): a new protocol is an entry with its ``protocol``
(and a reader in ``bench/load.py``), a new setting an entry with its ``chatcore_env``. A scenario with
settings of its own runs on a chatcore server of its own, started for it and stopped after it.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
from dataclasses import dataclass

from bench.fake_model import Mode
from bench.load import BUSY_PAUSE_SECONDS, TurnProtocol
from bench.report import CHATCORE, FLOOR

Setting = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ModelSetup:
    """How the fake model answers during a scenario (see ``bench/fake_model.py``)."""

    latency_ms: float = 0.0
    """How long a reply takes, streamed or not."""
    mode: Mode = "text"
    reply_chars: int = 0
    """Above 0: a text reply echoes the user's message to this many characters."""
    chunks: int = 1
    """A streamed text reply comes in this many pieces, spread over the latency."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server process: the floor or chatcore, the settings chatcore runs with beyond the run's own, and
    whether its PostgreSQL connections go through the counting proxy (``bench/pgwire.py``)."""

    target: str
    settings: tuple[Setting, ...] = ()
    counted: bool = False

    @property
    def name(self) -> str:
        """For logs and listings, e.g. ``chatcore[CHATCORE_RATE_LIMIT=1000000/minute]`` or ``floor (counted)``."""
        name = self.target
        if self.settings:
            name += f"[{','.join(f'{key}={value}' for key, value in self.settings)}]"
        return name + (" (counted)" if self.counted else "")

    @property
    def slug(self) -> str:
        """``name`` as a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    users: int
    turns: int
    model: ModelSetup = ModelSetup()
    protocol: TurnProtocol = "json"
    seeded_messages: int = 0
    """When above 0, every user continues its own conversation seeded with this many stored messages."""
    rounds: int = 1
    """Runs of users × turns one after another, each by new users (on new, or newly seeded, conversations), their
    figures pooled: more latencies for the percentiles at the same concurrency and conversation length."""
    targets: tuple[str, ...] = (FLOOR, CHATCORE)
    chatcore_settings: tuple[Setting, ...] = ()
    """Settings chatcore runs with in this scenario only, e.g. a rate limit."""
    baseline: str | None = None
    """The scenario of the plain JSON turn this path of a request is compared with (same model, same load)."""
    floor_protocol: TurnProtocol | None = None
    """How the floor's turns are asked for when it does not speak ``protocol`` (it knows JSON and chatcore's
    own SSE): a frontend protocol's path is compared with the least a streamed turn needs."""
    counted: bool = False
    """Count its servers' PostgreSQL statements and transactions: their connections go through a proxy
    (``bench/pgwire.py``), which costs the machine about 50 µs of CPU a round trip (the harness's, not theirs)."""

    @property
    def tool_calls_per_turn(self) -> int:
        return 1 if self.model.mode == "tool" else 0

    def protocol_for(self, target: str) -> TurnProtocol:
        """How ``target``'s turns are asked for in this scenario."""
        return self.floor_protocol or self.protocol if target == FLOOR else self.protocol

    def servers(self, targets: tuple[str, ...] | list[str] = (FLOOR, CHATCORE)) -> list[ServerSpec]:
        """The servers this scenario runs on, of ``targets`` (the run's choice)."""
        return [
            ServerSpec(target, self.chatcore_settings if target == CHATCORE else (), self.counted)
            for target in self.targets
            if target in targets
        ]


def scenario_table(args: argparse.Namespace) -> list[Scenario]:
    """Every scenario, in the order they run, sized by the command line."""

    def users(n: int) -> int:
        return max(1, round(n * float(args.scale)))

    streaming = ModelSetup(args.streaming_ms, "text", args.streaming_chars, args.streaming_chunks)
    streaming_long = ModelSetup(args.streaming_ms, "text", args.streaming_chars, args.streaming_long_chunks)
    open_streams = ModelSetup(args.open_streams_seconds * 1000, "text", args.streaming_chars, args.open_streams_chunks)
    streamed = f"{args.streaming_chars}-character reply in {{chunks}} chunks over {args.streaming_ms / 1000:g} s"
    return [
        Scenario("overhead", "instant model", users(args.overhead_users), args.overhead_turns),
        Scenario(
            "slow-model",
            f"{args.slow_latency_ms:g} ms model",
            users(args.slow_users),
            args.slow_turns,
            ModelSetup(args.slow_latency_ms),
        ),
        Scenario(
            "tool-turn",
            "one add_task call, then an answer",
            users(args.tool_users),
            args.tool_turns,
            ModelSetup(mode="tool"),
        ),
        Scenario(
            "history-fresh",
            "new conversations",
            users(args.history_users),
            args.history_turns,
            ModelSetup(args.history_latency_ms),
            rounds=args.history_rounds,
        ),
        Scenario(
            "history-800",
            f"conversations seeded with {args.history_messages} messages",
            users(args.history_users),
            args.history_turns,
            ModelSetup(args.history_latency_ms),
            seeded_messages=args.history_messages,
            rounds=args.history_rounds,
        ),
        Scenario(
            "open-streams",
            f"one SSE turn each, all open at once; a {args.open_streams_seconds:g} s model streaming "
            f"{args.streaming_chars} characters in {args.open_streams_chunks} chunks",
            users(args.open_streams),
            1,
            open_streams,
            protocol="sse",
        ),
        Scenario(
            "overhead-rate-limit",
            f"overhead, chatcore with CHATCORE_RATE_LIMIT={args.rate_limit} (never reached) and INFO logging",
            users(args.overhead_users),
            args.overhead_turns,
            chatcore_settings=(("CHATCORE_RATE_LIMIT", args.rate_limit), ("CHATCORE_LOG_LEVEL", "INFO")),
            baseline="overhead",
        ),
        Scenario(
            "overhead-budget",
            f"overhead, chatcore with CHATCORE_USER_TOKEN_BUDGET={args.token_budget} (never reached): the budget "
            "read as each turn starts, the calls counted",
            users(args.overhead_users),
            args.overhead_turns,
            chatcore_settings=(("CHATCORE_USER_TOKEN_BUDGET", args.token_budget),),
            baseline="overhead",
        ),
        Scenario(
            "approval-round-trip",
            "tool-turn with CHATCORE_APPROVAL_TOOLS=add_task: the chat request stops at the add_task call, a second "
            "request approves it, the call runs and the model answers",
            users(args.tool_users),
            args.tool_turns,
            ModelSetup(mode="tool"),
            protocol="approval",
            targets=(CHATCORE,),
            chatcore_settings=(("CHATCORE_APPROVAL_TOOLS", "add_task"),),
            baseline="tool-turn",
            counted=True,
        ),
        Scenario(
            "busy-reject",
            f"slow-model's turns, each (after a user's first) with a second request on its conversation sent "
            f"{BUSY_PAUSE_SECONDS * 1000:g} ms after it with if_busy: reject, refused at once (409); first text: "
            "the 409",
            users(args.slow_users),
            args.slow_turns,
            ModelSetup(args.slow_latency_ms),
            protocol="busy-reject",
            targets=(CHATCORE,),
            baseline="slow-model",
            counted=True,
        ),
        Scenario(
            "streaming-json",
            "JSON turns; " + streamed.format(chunks=args.streaming_chunks) + " when streamed (here: one reply)",
            users(args.streaming_users),
            args.streaming_turns,
            streaming,
            counted=True,
        ),
        Scenario(
            "streaming-sse",
            "SSE turns; " + streamed.format(chunks=args.streaming_chunks),
            users(args.streaming_users),
            args.streaming_turns,
            streaming,
            protocol="sse",
            baseline="streaming-json",
            counted=True,
        ),
        Scenario(
            "retried-sse",
            "streaming-sse's turns each sent with an Idempotency-Key and then again with it (issue 17's streamed "
            "retry): the repeat replays the stored turn's events; timed to the repeat's end",
            users(args.streaming_users),
            args.streaming_turns,
            streaming,
            protocol="sse-keyed",
            targets=(CHATCORE,),
            baseline="streaming-json",
            counted=True,
        ),
        Scenario(
            "streaming-long-sse",
            "SSE turns; " + streamed.format(chunks=args.streaming_long_chunks),
            users(args.streaming_users),
            args.streaming_turns,
            streaming_long,
            protocol="sse",
            baseline="streaming-json",
            counted=True,
        ),
        Scenario(
            "ai-sdk-stream",
            "streaming-sse's turns as the AI SDK's useChat asks for them: POST /api/{user}/ai-sdk/chat, its UI "
            "message stream (the floor streams its own SSE)",
            users(args.streaming_users),
            args.streaming_turns,
            streaming,
            protocol="ai-sdk",
            floor_protocol="sse",
            baseline="streaming-json",
            counted=True,
        ),
        Scenario(
            "ag-ui-stream",
            "streaming-sse's turns as an AG-UI client runs them: POST /api/{user}/ag-ui, its events (the floor "
            "streams its own SSE)",
            users(args.streaming_users),
            args.streaming_turns,
            streaming,
            protocol="ag-ui",
            floor_protocol="sse",
            baseline="streaming-json",
            counted=True,
        ),
    ]


def select(table: list[Scenario], patterns: str) -> list[Scenario]:
    """The scenarios named by comma-separated names or shell patterns (``streaming*``), in the table's order."""
    wanted = [pattern.strip() for pattern in patterns.split(",") if pattern.strip()]
    unknown = [pattern for pattern in wanted if not any(fnmatch.fnmatchcase(s.name, pattern) for s in table)]
    if unknown:
        known = ", ".join(s.name for s in table)
        raise SystemExit(f"no scenario matches {', '.join(unknown)} (the scenarios: {known})")
    return [s for s in table if any(fnmatch.fnmatchcase(s.name, pattern) for pattern in wanted)]


def user_id(server: str, scenario: Scenario, index: int, round_: int = 0) -> str:
    return f"{server}-{scenario.name}-{index:04d}" if round_ == 0 else f"{server}-{scenario.name}-r{round_}-{index:04d}"


def scenario_owners(server: str, scenario: Scenario) -> list[list[str]]:
    """The users of each round of ``scenario`` on ``server``."""
    return [[user_id(server, scenario, i, r) for i in range(scenario.users)] for r in range(scenario.rounds)]
