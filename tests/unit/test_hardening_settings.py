"""The hardening settings: rate limit, Redis, JWKS algorithms. Bad values stop start-up with the variable's name."""

from __future__ import annotations

import pytest

from chatcore.entrypoints.settings import ConfigurationError, RateLimit, Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30/minute", RateLimit(30, "minute")),
        (" 5 / second ", RateLimit(5, "second")),
        ("1000/HOUR", RateLimit(1000, "hour")),
        ("2/day", RateLimit(2, "day")),
        (None, None),
        ("", None),
        ("0", None),
        ("off", None),
        ("OFF", None),
        ("0/minute", None),
    ],
)
def test_rate_limits_parse(text: str | None, expected: RateLimit | None) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["30", "30/min", "minute", "-1/minute", "1.5/minute", "30/minute/2", "/minute", "x/day"]
)
def test_malformed_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="30/minute"):
        RateLimit.parse(text)
    with pytest.raises(ConfigurationError, match="CHATCORE_RATE_LIMIT"):
        Settings.from_env({"CHATCORE_RATE_LIMIT": text})


def test_a_rate_limit_is_at_least_one_request_of_a_known_unit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateLimit(0, "minute")
    with pytest.raises(ValueError, match="unit"):
        RateLimit(1, "week")  # type: ignore[arg-type]
    assert str(RateLimit(30, "minute")) == "30/minute"


def test_the_environment_configures_the_limit_and_its_redis() -> None:
    settings = Settings.from_env(
        {
            "CHATCORE_RATE_LIMIT": "30/minute",
            "CHATCORE_REDIS_URL": "redis://:hunter2@cache.internal:6379/0",
            "CHATCORE_REDIS_NAMESPACE": "prod-eu",
        }
    )
    assert settings.rate_limit == RateLimit(30, "minute")
    assert settings.redis_namespace == "prod-eu"
    shown = settings.describe()
    assert shown["rate_limit"] == "30/minute"
    assert "hunter2" not in str(shown)
    assert "hunter2" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.rate_limit, defaults.redis_url, defaults.redis_namespace) == (None, None, "chatcore")


def test_a_redis_url_must_be_a_redis_url() -> None:
    with pytest.raises(ConfigurationError, match="CHATCORE_REDIS_URL"):
        Settings.from_env({"CHATCORE_REDIS_URL": "http://cache.internal:6379"})


def test_jwks_algorithms_are_asymmetric_only() -> None:
    assert Settings.from_env({}).jwt_algorithms == ("EdDSA", "ES256", "RS256", "PS256")
    assert Settings.from_env({"BETTER_AUTH_ALGORITHMS": "EdDSA"}).jwt_algorithms == ("EdDSA",)
    assert Settings.from_env({"BETTER_AUTH_ALGORITHMS": " ES256 , RS512 "}).jwt_algorithms == ("ES256", "RS512")
    for refused in ("HS256", "none", "EdDSA,HS512", "ed25519"):
        with pytest.raises(ConfigurationError, match="BETTER_AUTH_ALGORITHMS"):
            Settings.from_env({"BETTER_AUTH_ALGORITHMS": refused})


def test_the_provider_http_transport_is_aiohttp_unless_set_to_httpx() -> None:
    assert Settings.from_env({}).llm_http == "aiohttp"
    assert Settings.from_env({"CHATCORE_LLM_HTTP": "HTTPX"}).llm_http == "httpx"
    with pytest.raises(ConfigurationError, match="CHATCORE_LLM_HTTP must be one of aiohttp, httpx"):
        Settings.from_env({"CHATCORE_LLM_HTTP": "requests"})


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("setting", "expected"), [(None, "RefusedAndDroppedAsConnectErrors"), ("httpx", "SpreadConnectionPools")]
)
async def test_the_container_gives_the_agent_the_transport_the_setting_names(
    llm: str, setting: str | None, expected: str
) -> None:
    from contextlib import asynccontextmanager

    from chatcore.entrypoints.container import agent_resource

    env = {"CHATCORE_LLM": llm, "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    settings = Settings.from_env(env | ({"CHATCORE_LLM_HTTP": setting} if setting else {}))
    async with asynccontextmanager(agent_resource)(settings) as agent:
        client = agent._client  # type: ignore[attr-defined]  # the SDK client the agent built
        transport = client._client._transport
        assert type(transport).__name__ == expected
        if setting is None:  # the aiohttp transport the agent's own SDK ships
            assert type(transport._inner).__module__.startswith(f"{llm}._vendor.httpx_aiohttp")
