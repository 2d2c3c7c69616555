"""Token budgets: the calendar windows, CHATCORE_USER_TOKEN_BUDGET, and StoredUsagePolicy's counting over a store."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import generate_latest

from chatcore.adapters.observability.instrumented import InstrumentedUsagePolicy
from chatcore.adapters.observability.metrics import ChatMetrics
from chatcore.entrypoints.settings import ConfigurationError, Settings
from chatcore.errors import BudgetExhausted, InvalidRequest
from chatcore.fakes import InMemoryChatDatabase, InMemoryUsageStore
from chatcore.model import Usage
from chatcore.usage import (
    BudgetPeriod,
    BudgetStatus,
    ModelCall,
    RecordedCall,
    StoredUsagePolicy,
    TokenBudget,
    UsageGrouping,
    UsageHistory,
    seconds_until,
    window_of,
)

NOW = datetime(2026, 12, 3, 14, 25, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        (BudgetPeriod.HOUR, datetime(2026, 12, 3, 14, tzinfo=UTC), datetime(2026, 12, 3, 15, tzinfo=UTC)),
        (BudgetPeriod.DAY, datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
        (BudgetPeriod.MONTH, datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_windows_are_calendar_aligned_in_utc(period: BudgetPeriod, start: datetime, end: datetime) -> None:
    assert window_of(NOW, period) == (start, end)
    assert window_of(start, period) == (start, end)  # a window holds its first instant
    assert window_of(end - timedelta(microseconds=1), period) == (start, end)
    assert window_of(end, period)[0] == end  # and not its end


def test_a_window_is_judged_in_utc_whatever_the_zone_of_the_clock() -> None:
    new_york = NOW.astimezone(ZoneInfo("America/New_York"))
    assert window_of(new_york, BudgetPeriod.DAY) == window_of(NOW, BudgetPeriod.DAY)
    assert window_of(datetime(2026, 2, 15), BudgetPeriod.MONTH) == (  # naive: taken as UTC
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert seconds_until(NOW + timedelta(seconds=10.2), NOW) == 11
    assert seconds_until(NOW, NOW) == 1
    assert seconds_until(NOW - timedelta(hours=1), NOW) == 1


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("200000/day", TokenBudget(200_000, BudgetPeriod.DAY)),
        (" 5000 / HOUR ", TokenBudget(5_000, BudgetPeriod.HOUR)),
        ("1_000_000/month", TokenBudget(1_000_000, BudgetPeriod.MONTH)),
        ("off", None),
        ("", None),
    ],
)
def test_the_budget_setting(text: str, budget: TokenBudget | None) -> None:
    assert TokenBudget.parse(text) == budget
    assert Settings.from_env({"CHATCORE_USER_TOKEN_BUDGET": text}).user_token_budget == budget


@pytest.mark.parametrize("text", ["200000", "200000/week", "0/day", "-5/day", "lots/day", "1.5/day", "/day"])
def test_a_malformed_budget_is_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_USER_TOKEN_BUDGET"):
        Settings.from_env({"CHATCORE_USER_TOKEN_BUDGET": text})


def test_the_turn_token_cap_setting() -> None:
    assert Settings.from_env({"CHATCORE_MAX_TURN_TOKENS": "50000"}).max_turn_tokens == 50_000
    assert Settings.from_env({}).max_turn_tokens is None
    with pytest.raises(ConfigurationError, match="CHATCORE_MAX_TURN_TOKENS"):
        Settings.from_env({"CHATCORE_MAX_TURN_TOKENS": "0"})


def call(tokens: int, at: datetime = NOW, model: str | None = "m") -> ModelCall:
    return ModelCall("fake", model, Usage(tokens - tokens // 4, tokens // 4), at, 0.01, None)


class CountingStore(InMemoryUsageStore):
    """The in-memory usage store, counting reads (each is a round trip on a database)."""

    def __init__(self) -> None:
        super().__init__(InMemoryChatDatabase())
        self.reads = 0

    async def tokens_since(self, user_id: str, since: datetime) -> int:
        self.reads += 1
        return await super().tokens_since(user_id, since)

    def store(self, user_id: str, *calls: ModelCall) -> None:
        """What finish_turn does with a turn's calls."""
        turn, conversation = uuid.uuid4(), uuid.uuid4()
        self.database.usage.extend(RecordedCall(user_id, conversation, turn, c) for c in calls)


async def test_without_a_budget_the_policy_never_reads_the_store() -> None:
    store = CountingStore()
    policy = StoredUsagePolicy(store)
    meter = await policy.begin("alice", NOW)
    for _ in range(3):
        await meter.admit(NOW)
        meter.record(call(10**9))
    meter.close()
    assert store.reads == 0
    assert await policy.status("alice", NOW) is None


async def test_a_turn_reads_the_stored_total_once_then_counts_its_calls() -> None:
    store = CountingStore()
    store.store("alice", call(600), call(300, NOW - timedelta(days=1)))  # yesterday's is another window
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.DAY))

    meter = await policy.begin("alice", NOW)
    await meter.admit(NOW)
    meter.record(call(300))
    await meter.admit(NOW)  # 900 < 1000
    meter.record(call(100))
    with pytest.raises(BudgetExhausted) as refused:
        await meter.admit(NOW)  # 1000: at the limit
    meter.close()

    assert store.reads == 1
    error = refused.value
    assert (error.detail, error.limit, error.used) == ("token budget exhausted", 1000, 1000)
    assert error.resets_at == datetime(2026, 12, 4, tzinfo=UTC)
    assert error.retry_after == seconds_until(datetime(2026, 12, 4, tzinfo=UTC), NOW) == 34_470


async def test_a_user_at_the_limit_is_refused_as_the_turn_starts_and_another_user_is_not() -> None:
    store = CountingStore()
    store.store("alice", call(1000))
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.DAY))

    with pytest.raises(BudgetExhausted):
        await policy.begin("alice", NOW)
    (await policy.begin("bob", NOW)).close()
    assert await policy.status("alice", NOW) == BudgetStatus(1000, 1000, datetime(2026, 12, 4, tzinfo=UTC))
    assert policy._ledgers == {}  # nothing is kept for users without a running turn


async def test_the_next_window_starts_from_zero() -> None:
    store = CountingStore()
    store.store("alice", call(1000))
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.DAY))
    tomorrow = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)

    meter = await policy.begin("alice", tomorrow)
    await meter.admit(tomorrow)
    meter.close()


async def test_a_turn_running_into_the_next_window_reads_that_window_once() -> None:
    store = CountingStore()
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.HOUR))
    meter = await policy.begin("alice", NOW)
    meter.record(call(999))
    await meter.admit(NOW)
    meter.record(call(10))
    with pytest.raises(BudgetExhausted):
        await meter.admit(NOW)

    next_hour = datetime(2026, 12, 3, 15, 0, 1, tzinfo=UTC)
    await meter.admit(next_hour)  # the calls of 14:25 count in their own hour
    assert store.reads == 2
    meter.record(call(5, next_hour))
    store.store("alice", call(995, next_hour))  # another replica's turn, stored now
    await meter.admit(next_hour)  # not seen: read before it was stored (in flight, for this turn)
    store.store("alice", call(999), call(10), call(5, next_hour))  # the turn is stored
    meter.close()
    with pytest.raises(BudgetExhausted):
        await policy.begin("alice", next_hour)  # the next turn sees it: 995 + 5 = 1000


async def test_concurrent_turns_in_one_process_count_each_others_calls_as_they_happen() -> None:
    store = CountingStore()
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.DAY))
    first = await policy.begin("alice", NOW)
    second = await policy.begin("alice", NOW)

    first.record(call(600))
    await second.admit(NOW)  # 600
    second.record(call(400))
    with pytest.raises(BudgetExhausted):
        await first.admit(NOW)  # 1000 between them, neither stored yet

    store.store("alice", call(600))  # the first turn is stored…
    first.close()
    with pytest.raises(BudgetExhausted):  # …and still counts once for the second, which read before
        await second.admit(NOW)
    with pytest.raises(BudgetExhausted):  # a new turn reads 600 stored, and counts the second's 400 running
        await policy.begin("alice", NOW)
    second.close()
    assert policy._ledgers == {}


async def test_the_usage_history_covers_whole_utc_days_and_the_last_30_by_default() -> None:
    store = CountingStore()
    day = datetime(2026, 12, 1, tzinfo=UTC)
    store.store("alice", call(10, day), call(20, day + timedelta(days=1, hours=23)), call(40, day + timedelta(days=2)))
    store.store("alice", call(80, day - timedelta(days=40)))
    policy = StoredUsagePolicy(store, TokenBudget(1000, BudgetPeriod.MONTH))
    history = UsageHistory(store, policy, clock=lambda: NOW)

    two_days = await history.report("alice", date(2026, 12, 1), date(2026, 12, 2), UsageGrouping.DAY)
    assert (two_days.totals.tokens, [g.key for g in two_days.groups]) == (30, ["2026-12-01", "2026-12-02"])
    recent = await history.report("alice", None, None)
    assert (recent.first, recent.last, recent.totals.model_calls) == (date(2026, 11, 4), date(2026, 12, 3), 3)
    assert recent.budget == BudgetStatus(1000, 70, datetime(2027, 1, 1, tzinfo=UTC))
    assert (await UsageHistory(store, clock=lambda: NOW).report("alice", None, None)).budget is None


@pytest.mark.parametrize(
    ("first", "last"), [(date(2026, 12, 2), date(2026, 12, 1)), (date.max, date.max), (None, date.min)]
)
async def test_a_range_that_is_backwards_or_off_the_calendar_is_an_invalid_request(
    first: date | None, last: date | None
) -> None:
    with pytest.raises(InvalidRequest):
        await UsageHistory(CountingStore(), clock=lambda: NOW).report("alice", first, last)


async def test_the_instrumented_policy_counts_tokens_by_kind_and_refusals() -> None:
    metrics = ChatMetrics()
    store = CountingStore()
    policy = InstrumentedUsagePolicy(StoredUsagePolicy(store, TokenBudget(100, BudgetPeriod.DAY)), metrics)
    meter = await policy.begin("alice", NOW)
    meter.record(ModelCall("openai", "gpt-4o-mini", Usage(90, 20, 30, 0), NOW, 0.2, None))
    with pytest.raises(BudgetExhausted):
        await meter.admit(NOW)
    meter.close()
    store.store("alice", call(110))
    with pytest.raises(BudgetExhausted):
        await policy.begin("alice", NOW)

    exposition = generate_latest(metrics.registry).decode()
    for kind, tokens in (("input", 90), ("output", 20), ("cached_read", 30), ("cache_write", 0)):
        assert f'chatcore_tokens_total{{kind="{kind}",model="gpt-4o-mini",provider="openai"}} {tokens:.1f}' in (
            exposition
        )
    assert "chatcore_budget_refusals_total 2.0" in exposition
