"""GET /api/{user_id}/usage: what a user's turns cost, per day, conversation or model, and their token budget.

Same token rules as every ``/api/{user_id}`` route (the ``require_path_user`` guard): a user sees only their
own usage. Bad dates or a bad ``group_by`` are 400 with a detail that says which.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import QueryParameter

from chatcore.entrypoints.http.auth import BEARER_SECURITY, principal_of, require_path_user
from chatcore.entrypoints.http.dto import error_spec as _error
from chatcore.errors import InvalidRequest
from chatcore.usage import BudgetStatus, UsageGroup, UsageGrouping, UsageHistory, UsageReport, UsageTotals

UNSET = msgspec.UNSET


class UsageTotalsOut(msgspec.Struct):
    input_tokens: Annotated[int, msgspec.Meta(description="All input tokens, cached ones included.")]
    output_tokens: int
    cached_tokens: Annotated[int, msgspec.Meta(description="Input tokens read from the provider's prompt cache.")]
    cache_write_tokens: Annotated[int, msgspec.Meta(description="Input tokens written to the provider's cache.")]
    model_calls: int
    cost_usd: Annotated[
        float | None, msgspec.Meta(description="USD from CHATCORE_PRICES; null when a call's model has no price.")
    ]

    @classmethod
    def of(cls, totals: UsageTotals) -> UsageTotalsOut:
        return cls(**_totals_fields(totals))


class UsageGroupOut(UsageTotalsOut):
    """One group's totals and what it is: ``day`` (UTC), ``conversation_id`` or ``model``, as grouped by."""

    day: date | msgspec.UnsetType = UNSET
    conversation_id: uuid.UUID | msgspec.UnsetType = UNSET
    model: Annotated[str | msgspec.UnsetType | None, msgspec.Meta(description="null: a call of no named model.")] = (
        UNSET
    )

    @classmethod
    def of_group(cls, group: UsageGroup, grouping: UsageGrouping) -> UsageGroupOut:
        fields = _totals_fields(group.totals)
        if grouping is UsageGrouping.DAY:
            return cls(**fields, day=date.fromisoformat(str(group.key)))
        if grouping is UsageGrouping.CONVERSATION:
            return cls(**fields, conversation_id=uuid.UUID(str(group.key)))
        return cls(**fields, model=group.key)


class BudgetOut(msgspec.Struct):
    limit: Annotated[int, msgspec.Meta(description="Input + output tokens allowed per window (per user).")]
    used: Annotated[int, msgspec.Meta(description="Input + output tokens recorded in the current window.")]
    resets_at: Annotated[datetime, msgspec.Meta(description="When the current window ends (calendar-aligned, UTC).")]

    @classmethod
    def of(cls, budget: BudgetStatus) -> BudgetOut:
        return cls(budget.limit, budget.used, budget.resets_at)


class UsageOut(msgspec.Struct, rename={"first": "from", "last": "to"}):
    first: Annotated[date, msgspec.Meta(description="The first day counted (UTC).")]
    last: Annotated[date, msgspec.Meta(description="The last day counted (UTC), included.")]
    group_by: str
    totals: UsageTotalsOut
    groups: list[UsageGroupOut]
    budget: Annotated[
        BudgetOut | None, msgspec.Meta(description="The user's token budget now; null when none is configured.")
    ]

    @classmethod
    def of(cls, report: UsageReport) -> UsageOut:
        return cls(
            first=report.first,
            last=report.last,
            group_by=report.grouping.value,
            totals=UsageTotalsOut.of(report.totals),
            groups=[UsageGroupOut.of_group(group, report.grouping) for group in report.groups],
            budget=None if report.budget is None else BudgetOut.of(report.budget),
        )


def _totals_fields(totals: UsageTotals) -> dict[str, Any]:
    return {
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "model_calls": totals.model_calls,
        "cost_usd": None if totals.cost_usd is None else float(totals.cost_usd),
    }


USAGE_EXAMPLE = {
    "from": "2026-12-01",
    "to": "2026-12-02",
    "group_by": "day",
    "totals": {
        "input_tokens": 5120,
        "output_tokens": 640,
        "cached_tokens": 2048,
        "cache_write_tokens": 0,
        "model_calls": 6,
        "cost_usd": 0.00099,
    },
    "groups": [
        {
            "input_tokens": 3072,
            "output_tokens": 384,
            "cached_tokens": 2048,
            "cache_write_tokens": 0,
            "model_calls": 4,
            "cost_usd": 0.0005376,
            "day": "2026-12-01",
        },
        {
            "input_tokens": 2048,
            "output_tokens": 256,
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "model_calls": 2,
            "cost_usd": 0.0004608,
            "day": "2026-12-02",
        },
    ],
    "budget": {"limit": 200000, "used": 2304, "resets_at": "2026-12-03T00:00:00Z"},
}


def _day(name: str, value: str | None) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO date (YYYY-MM-DD), not {value[:40]!r}") from None


def _grouping(value: str) -> UsageGrouping:
    try:
        return UsageGrouping(value.strip().lower())
    except ValueError:
        choices = "|".join(UsageGrouping)
        raise InvalidRequest(f"group_by must be one of {choices}, not {value[:40]!r}") from None


class UsageController(Controller):
    path = "/api/{user_id:str}"
    guards = [require_path_user]
    security = [{BEARER_SECURITY: []}]
    tags = ["usage"]

    @get(
        "/usage",
        summary="The user's token usage and cost, and their token budget",
        description=(
            "Every model call of the user's turns from the start of `from` to the end of `to` (UTC days, both "
            "included; by default the last 30 days), added up and grouped by `day`, `conversation` or `model`. "
            "`input_tokens` counts all input, `cached_tokens` and `cache_write_tokens` are parts of it; "
            "`cost_usd` comes from CHATCORE_PRICES and is null when a call's model has no price. `budget` is the "
            "CHATCORE_USER_TOKEN_BUDGET window now (input + output tokens; calendar-aligned UTC hour, day or "
            "month), or null when no budget is configured."
        ),
        responses={
            200: ResponseSpec(
                data_container=UsageOut,
                description="Totals, groups and budget",
                examples=[Example(summary="Two days, grouped by day", value=USAGE_EXAMPLE)],
            ),
            400: _error("A date that is not YYYY-MM-DD, from after to, or an unknown group_by", "bad group_by", 400),
            401: _error("Missing, malformed, badly signed or expired token", "Missing or invalid bearer token", 401),
            403: _error("The path user is not the token's subject", "Access denied", 403),
            503: _error("Database or auth server unavailable", "The database is unavailable", 503),
        },
    )
    async def usage(
        self,
        request: Request[Any, Any, Any],
        first: Annotated[
            str | None,
            QueryParameter(name="from", format="date", description="First day (UTC), e.g. 2026-12-01."),
        ] = None,
        last: Annotated[
            str | None,
            QueryParameter(name="to", format="date", description="Last day (UTC), included; default today."),
        ] = None,
        group_by: Annotated[
            str,
            QueryParameter(description="day, conversation or model.", enum=list(UsageGrouping)),
        ] = "day",
    ) -> UsageOut:
        history: UsageHistory = request.app.state.usage
        report = await history.report(
            principal_of(request).user_id, _day("from", first), _day("to", last), _grouping(group_by)
        )
        return UsageOut.of(report)
