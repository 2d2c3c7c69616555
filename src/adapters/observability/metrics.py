"""The Prometheus metrics of one app, in a registry of its own.

A registry per app (not prometheus_client's global one) lets several apps live in one process, as
they do in the test suite, without "Duplicated timeseries" errors, and keeps each app's numbers its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from sqlalchemy.ext.asyncio import AsyncEngine

TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
"""Seconds. A turn is one or more model calls: from a cached offline answer to minutes of tool steps."""

MODEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OK = "ok"


class ChatMetrics:
    """Every chatcore metric. Label values are bounded sets (outcomes, providers, tool names): never user data."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.turn_seconds = Histogram(
            "chatcore_turn_seconds",
            "Chat turn latency as the client sees it, by outcome (ok, or the error's name).",
            ["outcome"],
            buckets=TURN_BUCKETS,
            registry=self.registry,
        )
        self.turns_in_flight = Gauge(
            "chatcore_turns_in_flight", "Chat turns being answered right now.", registry=self.registry
        )
        self.model_call_seconds = Histogram(
            "chatcore_model_call_seconds",
            "Latency of one model call (one step of a turn), by provider and outcome.",
            ["provider", "outcome"],
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "chatcore_tool_calls", "Tool calls run for the model, by tool.", ["tool"], registry=self.registry
        )
        self.tool_errors = Counter(
            "chatcore_tool_errors",
            "Tool calls that raised (a refusal, bad arguments, a timeout or a bug), by tool.",
            ["tool"],
            registry=self.registry,
        )
        self.tool_call_seconds = Histogram(
            "chatcore_tool_call_seconds",
            "Latency of one tool call, by tool.",
            ["tool"],
            buckets=TOOL_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "chatcore_tokens",
            "Tokens the model providers reported, by provider, model and kind (input, output, cached_read, "
            "cache_write; cached_read and cache_write are parts of input).",
            ["provider", "model", "kind"],
            registry=self.registry,
        )
        self.budget_refusals = Counter(
            "chatcore_budget_refusals",
            "Model calls refused because the user's token budget was used up (a turn refused with 429, or a turn "
            "ended between two steps).",
            registry=self.registry,
        )
        self._token_counters: dict[tuple[str, str], tuple[Counter, Counter, Counter, Counter]] = {}
        self.db_pool_in_use = Gauge(
            "chatcore_db_pool_in_use",
            "Database connections checked out of the pool when scraped.",
            registry=self.registry,
        )
        self.db_pool_in_use.set_function(lambda: 0.0)

    def token_counters(self, provider: str, model: str) -> tuple[Counter, Counter, Counter, Counter]:
        """The ``chatcore_tokens_total`` children of a provider's model: input, output, cached_read, cache_write.

        Looked up once per model (``labels`` costs a lock and a validation each time; every model call counts four).
        """
        children = self._token_counters.get((provider, model))
        if children is None:
            input_tokens, output_tokens, cached_read, cache_write = (
                self.tokens.labels(provider, model, kind) for kind in ("input", "output", "cached_read", "cache_write")
            )
            children = self._token_counters[(provider, model)] = (input_tokens, output_tokens, cached_read, cache_write)
        return children

    def watch_pool(self, engine: AsyncEngine) -> None:
        """Read the engine's pool at every scrape: the number is exact, and costs nothing between scrapes."""
        pool = engine.sync_engine.pool

        def checked_out() -> float:
            count = getattr(pool, "checkedout", None)  # QueuePool has it; SQLite's in-memory StaticPool does not
            return float(count()) if callable(count) else 0.0

        self.db_pool_in_use.set_function(checked_out)

    def unwatch_pool(self) -> None:
        self.db_pool_in_use.set_function(lambda: 0.0)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format the scraper's Accept header asks for (Prometheus text 0.0.4 by default)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


async def pool_gauge_resource(metrics: ChatMetrics, engine: AsyncEngine) -> AsyncIterator[None]:
    """A container Resource: the pool gauge follows the app's engine while the app runs."""
    metrics.watch_pool(engine)
    try:
        yield None
    finally:
        metrics.unwatch_pool()
