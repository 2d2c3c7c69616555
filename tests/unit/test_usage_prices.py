"""Cost arithmetic against a prices file (CHATCORE_PRICES), TOML and JSON: exact decimals, never a guessed price."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcore.entrypoints.prices import load_prices
from chatcore.entrypoints.settings import ConfigurationError, Settings
from chatcore.model import Usage
from chatcore.usage import Price, Prices

PRICES_TOML = """
["gpt-4o-mini"]
input = 0.15
output = 0.60
cached_read = 0.075

["claude-sonnet-4-6"]
input = 3
output = 15
cached_read = 0.30
cache_write = 3.75
"""


@pytest.fixture
def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML)
    return path


def test_a_toml_prices_file_is_read_as_exact_decimals(prices_file: Path) -> None:
    prices = load_prices(prices_file)

    assert prices.by_model["gpt-4o-mini"] == Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    assert prices.by_model["claude-sonnet-4-6"] == Price(Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"))


def test_a_json_prices_file_gives_the_same_prices(prices_file: Path, tmp_path: Path) -> None:
    as_json = tmp_path / "prices.json"
    as_json.write_text(
        json.dumps(
            {
                "gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_read": 0.075},
                "claude-sonnet-4-6": {"input": 3, "output": 15, "cached_read": 0.30, "cache_write": 3.75},
            }
        )
    )
    assert load_prices(as_json) == load_prices(prices_file)


def test_the_cost_of_an_openai_call_bills_cached_reads_at_their_rate(prices_file: Path) -> None:
    prices = load_prices(prices_file)
    # 1,000 input tokens of which 400 cached, 200 output: 600 × 0.15 + 400 × 0.075 + 200 × 0.60 per million.
    cost = prices.cost("gpt-4o-mini", Usage(input_tokens=1000, output_tokens=200, cached_read_tokens=400))
    assert cost == Decimal("0.00024")
    assert cost == (600 * Decimal("0.15") + 400 * Decimal("0.075") + 200 * Decimal("0.60")) / 1_000_000


def test_the_cost_of_an_anthropic_call_bills_cache_writes_and_reads(prices_file: Path) -> None:
    prices = load_prices(prices_file)
    # input_tokens is the whole input: 100 fresh + 2,000 read from the cache + 500 written to it.
    usage = Usage(input_tokens=2600, output_tokens=50, cached_read_tokens=2000, cache_write_tokens=500)
    # 100 × 3 + 2,000 × 0.30 + 500 × 3.75 + 50 × 15 = 3,525 USD per million.
    assert prices.cost("claude-sonnet-4-6", usage) == Decimal("0.003525")


def test_a_model_without_a_price_has_no_cost_and_a_dated_snapshot_has_its_models(prices_file: Path) -> None:
    prices = load_prices(prices_file)
    usage = Usage(1_000_000, 1_000_000)

    assert prices.cost("gpt-4o", usage) is None
    assert prices.cost(None, usage) is None
    assert prices.cost("gpt-4o-mini-2024-07-18", usage) == Decimal("0.75")
    assert prices.cost("claude-sonnet-4-6-20260101", usage) == Decimal(18)
    assert prices.cost("gpt-4o-mini-preview", usage) is None  # not a dated snapshot: another model


def test_tokens_of_a_kind_the_price_does_not_give_make_the_cost_unknown(prices_file: Path) -> None:
    prices = load_prices(prices_file)
    assert prices.cost("gpt-4o-mini", Usage(100, 10, cache_write_tokens=50)) is None
    assert prices.cost("gpt-4o-mini", Usage(100, 10, cached_read_tokens=50)) is not None


def test_costs_are_exact_to_the_picodollar() -> None:
    price = Price(Decimal("0.0375"), Decimal("0.000001"))
    assert price.cost(Usage(1, 1)) == Decimal("0.000000037501")  # 37,500 p$ for the input, 1 p$ for the output


@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.decimals("0", "100", places=6),
    st.decimals("0", "100", places=6),
    st.decimals("0", "100", places=6),
)
def test_the_cost_is_linear_and_never_below_the_cheaper_rate(
    fresh: int, cached: int, output: int, input_rate: Decimal, cached_rate: Decimal, output_rate: Decimal
) -> None:
    price = Price(input_rate, output_rate, cached_rate)
    cost = price.cost(Usage(fresh + cached, output, cached))
    assert cost == (fresh * input_rate + cached * cached_rate + output * output_rate) / 1_000_000
    assert cost is not None
    assert cost >= 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["m"]\ninput = 1\n', "needs output"),
        ('["m"]\ninput = 1\noutput = -1\n', "output must be a finite number at least 0"),
        ('["m"]\ninput = 1\noutput = 2\ncached_reads = 1\n', "unknown keys cached_reads"),
        ('["m"]\ninput = true\noutput = 2\n', "input must be a number"),
        ('["m"]\ninput = "cheap"\noutput = 2\n', "input must be a number"),
        ('["m"]\ninput = nan\noutput = 2\n', "input must be a finite number"),
        ("m = 3\n", "must be a table of prices"),
        ("not toml [", "is not valid TOML"),
        ('{"m": {"input": 1, "output": }}', "is not valid JSON"),
    ],
)
def test_a_bad_prices_file_is_refused_saying_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_prices(path)
    with pytest.raises(ConfigurationError, match=f"CHATCORE_PRICES: .*{message}"):
        Settings.from_env({"CHATCORE_PRICES": str(path)})


def test_a_missing_prices_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_PRICES: cannot read"):
        Settings.from_env({"CHATCORE_PRICES": str(tmp_path / "nowhere.toml")})


def test_the_settings_name_the_prices_file(prices_file: Path) -> None:
    assert Settings.from_env({"CHATCORE_PRICES": str(prices_file)}).prices_path == str(prices_file)
    assert Settings.from_env({}).prices_path is None


def test_prices_from_a_mapping_must_be_a_table() -> None:
    with pytest.raises(ValueError, match="table of models"):
        Prices.from_mapping([])  # type: ignore[arg-type]
