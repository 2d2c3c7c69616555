"""Usage accounting: what model calls cost in tokens and dollars, and per-user token budgets over time windows.

Pure values and arithmetic, no I/O (the store behind ``StoredUsagePolicy`` is a port). Money is ``Decimal``
throughout: prices are read as decimal text (``0.15`` is 0.15, not the float nearest to it), a call's cost is
exact to the picodollar, and it becomes a float only in a JSON body.

Budget windows are calendar-aligned in UTC: an hour starts on the hour, a day at 00:00 UTC, a month at 00:00 UTC
on its 1st. A user over budget waits until the window ends (``Retry-After``, ``resets_at``), then has the whole
budget again. See docs/usage.md for what concurrent turns may overshoot.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from chatcore.errors import BudgetExhausted, InvalidRequest
from chatcore.model import Usage, utcnow

if TYPE_CHECKING:
    from chatcore.ports import UsageMeter, UsagePolicy, UsageStore

TOKENS_PER_PRICE_UNIT: Final = 1_000_000
"""Prices are in USD per million tokens."""
PICO: Final = Decimal("1e-12")
"""A call's cost is kept to the picodollar: exact for any price with up to six decimals per million tokens."""
PRICE_KEYS: Final = ("input", "output", "cached_read", "cache_write")
_SNAPSHOT_SUFFIX: Final = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
"""A dated snapshot of a model (``gpt-4o-mini-2024-07-18``, ``claude-3-5-haiku-20241022``): priced as its model."""


# --- prices ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of one model. Cached-read and cache-write tokens are parts of the input, billed at
    their own rate instead of ``input``; a rate not given prices no call that has such tokens (cost unknown)."""

    input: Decimal
    output: Decimal
    cached_read: Decimal | None = None
    cache_write: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal | None:
        """The call's cost in USD, to the picodollar; None when it has tokens of a kind this price does not give."""
        cached_read, cache_write = usage.cached_read_tokens, usage.cache_write_tokens
        if (cached_read and self.cached_read is None) or (cache_write and self.cache_write is None):
            return None
        uncached = max(usage.input_tokens - cached_read - cache_write, 0)
        total = uncached * self.input + usage.output_tokens * self.output
        if cached_read and self.cached_read is not None:
            total += cached_read * self.cached_read
        if cache_write and self.cache_write is not None:
            total += cache_write * self.cache_write
        return (total / TOKENS_PER_PRICE_UNIT).quantize(PICO)


@dataclass(frozen=True, slots=True)
class Prices:
    """Prices by model name. A model without a price has no cost (None), never a guess; a dated snapshot of a
    model (``gpt-4o-mini-2024-07-18``) has its model's price unless it is priced itself."""

    by_model: Mapping[str, Price] = field(default_factory=dict)

    def price_of(self, model: str | None) -> Price | None:
        if model is None:
            return None
        price = self.by_model.get(model)
        if price is None:
            undated = _SNAPSHOT_SUFFIX.sub("", model)
            price = self.by_model.get(undated) if undated != model else None
        return price

    def cost(self, model: str | None, usage: Usage) -> Decimal | None:
        """The call's cost in USD; None when its model has no price, unless it spent no tokens (that costs 0)."""
        if usage.total_tokens == 0 and not usage.cached_read_tokens and not usage.cache_write_tokens:
            return Decimal(0)
        price = self.price_of(model)
        return None if price is None else price.cost(usage)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Prices:
        """Prices from a parsed TOML or JSON document: one table per model with ``input`` and ``output`` (required)
        and ``cached_read``, ``cache_write`` (optional), each a number of USD per million tokens, at least 0.

        Raises ValueError naming the model and key at fault.
        """
        if not isinstance(data, Mapping):
            raise ValueError("prices must be a table of models")
        prices: dict[str, Price] = {}
        for model, table in data.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"[{model!r}] must be a table of prices")
            unknown = sorted(set(table) - set(PRICE_KEYS))
            if unknown:
                allowed = ", ".join(PRICE_KEYS)
                raise ValueError(f"[{model!r}] has unknown keys {', '.join(unknown)} (allowed: {allowed})")
            missing = [key for key in ("input", "output") if key not in table]
            if missing:
                raise ValueError(f"[{model!r}] needs {' and '.join(missing)}")
            rates = {key: _rate(model, key, table[key]) for key in PRICE_KEYS if key in table}
            prices[str(model)] = Price(**rates)
        return cls(prices)


def _rate(model: str, key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"[{model!r}] {key} must be a number of USD per million tokens")
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"[{model!r}] {key} must be a number, not {value!r}") from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"[{model!r}] {key} must be a finite number at least 0, not {value!r}")
    return rate


# --- what a model call cost, and a turn's or a period's totals ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One model call as it is recorded: who answered, the tokens the provider reported, when, how long, the cost.

    A call the provider reported no usage for counts as zero tokens (the offline agent's calls do); a failed call
    is recorded only when the provider billed it (``AgentError.usage``).
    """

    provider: str
    model: str | None
    usage: Usage
    started_at: datetime
    latency_seconds: float
    cost_usd: Decimal | None
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def tokens(self) -> int:
        """What a token budget counts: input and output."""
        return self.usage.total_tokens


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """A model call as stored: whose, in which conversation and turn."""

    user_id: str
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    call: ModelCall


def recorded(
    user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, calls: Iterable[ModelCall]
) -> list[RecordedCall]:
    """A turn's calls as its store writes them."""
    return [RecordedCall(user_id, conversation_id, turn_id, call) for call in calls]


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Tokens, calls and cost added up: of one turn (the chat reply's ``usage``), or of a period (the usage API).

    ``cost_usd`` is None when any call in it has no price.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Cached-read tokens (part of ``input_tokens``)."""
    cache_write_tokens: int = 0
    """Tokens written to the provider's prompt cache (part of ``input_tokens``)."""
    model_calls: int = 0
    cost_usd: Decimal | None = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: UsageTotals) -> UsageTotals:
        if not isinstance(other, UsageTotals):
            return NotImplemented
        return UsageTotals(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.model_calls + other.model_calls,
            None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd,
        )

    @classmethod
    def sum(cls, parts: Iterable[UsageTotals]) -> UsageTotals:
        """Totals of totals: counts added, the cost None when any part's is."""
        total = cls()
        for part in parts:
            total += part
        return total

    @classmethod
    def of(cls, calls: Iterable[ModelCall]) -> UsageTotals:
        """The totals of some calls (a turn's)."""
        input_tokens = output_tokens = cached = written = count = 0
        cost: Decimal | None = Decimal(0)
        for call in calls:
            usage = call.usage
            input_tokens += usage.input_tokens
            output_tokens += usage.output_tokens
            cached += usage.cached_read_tokens
            written += usage.cache_write_tokens
            count += 1
            cost = None if cost is None or call.cost_usd is None else cost + call.cost_usd
        return cls(input_tokens, output_tokens, cached, written, count, cost)

    def to_json(self) -> dict[str, int | float | None]:
        """The chat reply's ``usage``: ``input_tokens``, ``output_tokens``, ``cached_tokens``, ``model_calls``,
        ``cost_usd`` (a number of USD, or null when a call had no price)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "model_calls": self.model_calls,
            "cost_usd": None if self.cost_usd is None else float(self.cost_usd),
        }


class UsageGrouping(enum.StrEnum):
    DAY = "day"
    CONVERSATION = "conversation"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """The totals of one day (``key`` an ISO date, UTC), conversation (its id) or model (its name, None: unknown)."""

    key: str | None
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A user's token budget now: ``limit`` tokens per window, ``used`` so far in it, when it ends."""

    limit: int
    used: int
    resets_at: datetime


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What the usage API answers: the totals of the UTC days ``first`` to ``last`` (both included), grouped, and
    the user's budget (None when the user has none)."""

    first: date
    last: date
    grouping: UsageGrouping
    totals: UsageTotals
    groups: tuple[UsageGroup, ...]
    budget: BudgetStatus | None


DEFAULT_REPORT_DAYS: Final = 30
"""Days the usage API covers when not told (ending today)."""


class UsageHistory:
    """The usage API's side of the domain: a user's recorded usage over whole UTC days, and their budget now."""

    def __init__(
        self, store: UsageStore, policy: UsagePolicy | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def report(
        self, user_id: str, first: date | None, last: date | None, grouping: UsageGrouping = UsageGrouping.DAY
    ) -> UsageReport:
        """The user's usage from the start of day ``first`` to the end of day ``last`` (UTC, both included;
        by default the last 30 days up to today). Raises InvalidRequest when ``first`` is after ``last``."""
        now = self.clock()
        try:
            last = last or now.astimezone(UTC).date()
            first = first or last - timedelta(days=DEFAULT_REPORT_DAYS - 1)
            start = datetime.combine(first, time(), UTC)
            end = datetime.combine(last, time(), UTC) + timedelta(days=1)
        except OverflowError:
            raise InvalidRequest("from and to must be dates between 0001-01-01 and 9999-12-30") from None
        if first > last:
            raise InvalidRequest("from must not be after to")
        totals, groups = await self.store.totals(user_id, start, end, grouping)
        budget = None if self.policy is None else await self.policy.status(user_id, now)
        return UsageReport(first, last, grouping, totals, groups, budget)


# --- budgets and their windows -----------------------------------------------------------------------------------


class BudgetPeriod(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


def window_of(now: datetime, period: BudgetPeriod) -> tuple[datetime, datetime]:
    """The calendar-aligned UTC window holding ``now``: its start (inclusive) and end (exclusive)."""
    now = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    if period is BudgetPeriod.HOUR:
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period is BudgetPeriod.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` until ``moment``, rounded up and at least 1 (a ``Retry-After`` value)."""
    return max(1, math.ceil((moment - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """At most ``limit`` input + output tokens per user per ``period`` (``CHATCORE_USER_TOKEN_BUDGET=200000/day``)."""

    limit: int
    period: BudgetPeriod

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a token budget allows at least 1 token")

    def __str__(self) -> str:
        return f"{self.limit}/{self.period}"

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        return window_of(now, self.period)

    @classmethod
    def parse(cls, text: str | None) -> TokenBudget | None:
        """``N/hour|day|month`` (``200000/day``, ``1_000_000/month``); empty or ``off`` mean none. ValueError else."""
        value = (text or "").strip().lower()
        if value in ("", "off"):
            return None
        count, slash, unit = value.partition("/")
        count, unit = count.strip().replace("_", ""), unit.strip()
        periods = "|".join(BudgetPeriod)
        if not slash or not count.isdigit() or unit not in set(BudgetPeriod):
            raise ValueError(f"must look like 200000/day (N/{periods}), or off; not {text!r}")
        if int(count) < 1:
            raise ValueError(f"must allow at least 1 token, not {text!r}")
        return cls(int(count), BudgetPeriod(unit))


def exhausted(limit: int, used: int, window_end: datetime, now: datetime) -> BudgetExhausted:
    return BudgetExhausted(retry_after=seconds_until(window_end, now), resets_at=window_end, limit=limit, used=used)


class StoredUsagePolicy:
    """The default ``UsagePolicy``: one budget for every user, counted in the store every replica shares.

    Without a budget it never touches the store. With one, a turn reads the user's stored total for the current
    window once, as it starts, and then counts in memory: its own calls, and the calls of the user's other turns
    running in this process (``_Ledger``), so concurrent turns in one process overshoot by at most the calls
    already in flight. Turns on other replicas are seen once they are stored (docs/usage.md).
    """

    def __init__(self, store: UsageStore, budget: TokenBudget | None = None) -> None:
        self.store = store
        self.budget = budget
        self._ledgers: dict[str, _Ledger] = {}

    async def begin(self, user_id: str, now: datetime) -> UsageMeter:
        if self.budget is None:
            return UNMETERED
        ledger = self._ledgers.get(user_id)
        if ledger is None:
            ledger = self._ledgers[user_id] = _Ledger()
        meter = _BudgetMeter(self, user_id, ledger, self.budget)
        ledger.open.add(meter)
        try:
            await meter.read(now)
            meter.check(now)
        except BaseException:
            meter.close()
            raise
        return meter

    async def status(self, user_id: str, now: datetime) -> BudgetStatus | None:
        if self.budget is None:
            return None
        start, end = self.budget.window(now)
        return BudgetStatus(self.budget.limit, await self.store.tokens_since(user_id, start), end)

    def _closed(self, user_id: str, ledger: _Ledger) -> None:
        if not ledger.open and self._ledgers.get(user_id) is ledger:
            del self._ledgers[user_id]


class _Unmetered:
    """The meter of a turn without a budget: admits every call, keeps nothing."""

    async def admit(self, now: datetime) -> None:
        return None

    def record(self, call: ModelCall) -> None:
        return None

    def close(self) -> None:
        return None


UNMETERED: Final = _Unmetered()


@dataclass(eq=False, slots=True)
class _Spent:
    """A call of one of the user's turns in this process: its tokens, when it started, and when its turn was
    stored (the ledger's ``version`` then; None while the turn runs)."""

    started_at: datetime
    tokens: int
    stored_version: int | None = None


@dataclass(eq=False, slots=True)
class _Ledger:
    """The calls of one user's turns running in this process, so each of them counts the others' as they happen.

    A stored total read by a meter holds the turns stored before the read; a call counts for that meter on top of
    it unless its turn was stored before the read (``stored_version <= read_version``). A turn stored while the
    read was in flight counts twice for it: the error is on the safe side.
    """

    version: int = 0
    calls: list[_Spent] = field(default_factory=list)
    open: set[_BudgetMeter] = field(default_factory=set)


class _BudgetMeter:
    def __init__(self, policy: StoredUsagePolicy, user_id: str, ledger: _Ledger, budget: TokenBudget) -> None:
        self._policy = policy
        self._user_id = user_id
        self._ledger = ledger
        self._budget = budget
        self._mine: list[_Spent] = []
        self._stored_total = 0
        self._read_version = 0
        self._window: tuple[datetime, datetime] = (datetime.min.replace(tzinfo=UTC),) * 2
        self._closed = False

    async def read(self, now: datetime) -> None:
        """The stored total of the window holding ``now`` (one round trip)."""
        window = self._budget.window(now)
        self._read_version = self._ledger.version  # before the read: a turn stored meanwhile counts (twice at worst)
        self._stored_total = await self._policy.store.tokens_since(self._user_id, window[0])
        self._window = window

    def used(self) -> int:
        start = self._window[0]
        return self._stored_total + sum(
            spent.tokens
            for spent in self._ledger.calls
            if spent.started_at >= start and (spent.stored_version is None or spent.stored_version > self._read_version)
        )

    def check(self, now: datetime) -> None:
        used = self.used()
        if used >= self._budget.limit:
            raise exhausted(self._budget.limit, used, self._window[1], now)

    async def admit(self, now: datetime) -> None:
        if now >= self._window[1]:  # the turn has run into a new window: what is stored of it is read once more
            await self.read(now)
        self.check(now)

    def record(self, call: ModelCall) -> None:
        spent = _Spent(call.started_at, call.tokens)
        self._mine.append(spent)
        self._ledger.calls.append(spent)

    def close(self) -> None:
        """The turn's calls are stored (or never will be): from now on they count through the store."""
        if self._closed:
            return
        self._closed = True
        ledger = self._ledger
        ledger.version += 1
        for spent in self._mine:
            spent.stored_version = ledger.version
        ledger.open.discard(self)
        oldest_read = min((meter._read_version for meter in ledger.open), default=ledger.version)
        ledger.calls = [s for s in ledger.calls if s.stored_version is None or s.stored_version > oldest_read]
        self._policy._closed(self._user_id, ledger)
