"""What ``make bench`` runs: the scenarios (users × turns against a fake model set up a certain way) and their users."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.fake_model import Mode


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
