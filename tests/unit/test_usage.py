"""Usage: the tokens a model call cost, added up over calls."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcore.errors import AgentRateLimited, AgentUnavailable
from chatcore.model import AgentResponse, Usage

usages = st.builds(Usage, *(st.integers(min_value=0, max_value=10**9) for _ in range(4)))


def test_usage_is_zero_by_default_and_frozen() -> None:
    usage = Usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cached_read_tokens, usage.cache_write_tokens) == (0, 0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 1  # type: ignore[misc]


def test_usages_add_field_by_field() -> None:
    total = Usage(100, 20, 60, 5) + Usage(7, 3, 0, 1)
    assert total == Usage(input_tokens=107, output_tokens=23, cached_read_tokens=60, cache_write_tokens=6)
    assert total.total_tokens == 130


@given(st.lists(st.one_of(st.none(), usages), max_size=8))
def test_sum_is_the_field_sums_and_none_counts_as_zero(calls: list[Usage | None]) -> None:
    total = Usage.sum(calls)
    reported = [u for u in calls if u is not None]
    assert total.input_tokens == sum(u.input_tokens for u in reported)
    assert total.output_tokens == sum(u.output_tokens for u in reported)
    assert total.cached_read_tokens == sum(u.cached_read_tokens for u in reported)
    assert total.cache_write_tokens == sum(u.cache_write_tokens for u in reported)


def test_adding_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Usage() + 1  # type: ignore[operator]


def test_a_response_and_an_error_carry_no_usage_unless_given() -> None:
    assert AgentResponse("hi").usage is None
    assert AgentResponse("hi").model is None
    assert AgentUnavailable("down").usage is None
    assert AgentRateLimited("slow", provider="openai", retry_after=3).usage is None
    billed = AgentUnavailable("cut off", provider="anthropic", usage=Usage(10, 2))
    assert billed.usage == Usage(10, 2)
