"""Bounded-storage settings: CHATCORE_EVENT_RETENTION in s/m/h/d, CHATCORE_JANITOR on unless switched off."""

from __future__ import annotations

import pytest

from chatcore.entrypoints.container import retention_policy
from chatcore.entrypoints.settings import ConfigurationError, Settings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604_800), ("12h", 43_200), ("15m", 900), ("90s", 90), ("90", 90), ("1.5h", 5_400), (" 2D ", 172_800)],
)
def test_the_event_retention_takes_units(text: str, seconds: float) -> None:
    assert Settings.from_env({"CHATCORE_EVENT_RETENTION": text}).event_retention_seconds == seconds


@pytest.mark.parametrize("text", ["0s", "-1d", "7w", "d", "x", "nan", "inf", "1e999s"])
def test_a_malformed_or_empty_retention_is_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_EVENT_RETENTION"):
        Settings.from_env({"CHATCORE_EVENT_RETENTION": text})


def test_the_defaults_keep_a_week_and_run_the_janitor_every_minute() -> None:
    settings = Settings.from_env({})
    policy = retention_policy(settings)
    assert (settings.janitor, policy.event_retention_seconds, policy.interval_seconds) == (True, 604_800, 60)


@pytest.mark.parametrize(("text", "on"), [("false", False), ("0", False), ("off", False), ("true", True), ("1", True)])
def test_the_janitor_switch(text: str, on: bool) -> None:
    assert Settings.from_env({"CHATCORE_JANITOR": text}).janitor is on


def test_a_janitor_switch_that_is_neither_on_nor_off_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_JANITOR must be true or false"):
        Settings.from_env({"CHATCORE_JANITOR": "sometimes"})
