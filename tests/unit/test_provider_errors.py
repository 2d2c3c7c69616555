"""agent_error: one classification of provider failures for every provider, logged without the provider's words."""

from __future__ import annotations

import logging

import pytest

from chatcore.adapters.providers.errors import (
    HttpFailure,
    StreamFailure,
    TransportFailure,
    UnexpectedFailure,
    UnreadableReply,
    agent_error,
)
from chatcore.errors import AgentError, AgentRateLimited, AgentTimeout, AgentUnavailable, ContextTooLong
from chatcore.model import Usage

SECRET = "sk-SECRET-in-the-message"


def openai_body(message: str, type_: str, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_body(type_: str, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011"}


@pytest.mark.parametrize(
    ("failure", "error_class", "detail"),
    [
        (TransportFailure.TIMEOUT, AgentTimeout, "{name} request timed out"),
        (TransportFailure.CONNECT, AgentUnavailable, "{name} request failed: could not connect"),
        (TransportFailure.DROPPED, AgentUnavailable, "{name} request failed: the connection dropped mid-reply"),
        (
            HttpFailure(401, {}, openai_body(SECRET, "invalid_request_error")),
            AgentUnavailable,
            "{name} request failed: authentication error",
        ),
        (
            HttpFailure(403, {}, anthropic_body("permission_error", SECRET)),
            AgentUnavailable,
            "{name} request failed: permission denied",
        ),
        (HttpFailure(413, {}, None), ContextTooLong, ContextTooLong.default_detail),
        (
            HttpFailure(400, {}, anthropic_body("invalid_request_error", "prompt is too long: 1 > 0")),
            ContextTooLong,
            ContextTooLong.default_detail,
        ),
        (
            HttpFailure(400, {}, openai_body(SECRET, "invalid_request_error", "context_length_exceeded")),
            ContextTooLong,
            ContextTooLong.default_detail,
        ),
        (
            HttpFailure(529, {}, anthropic_body("overloaded_error", SECRET)),
            AgentUnavailable,
            "{name} request failed: overloaded (HTTP 529)",
        ),
        (HttpFailure(503, {}, "<html>down</html>"), AgentUnavailable, "{name} request failed: server error (HTTP 503)"),
        (
            HttpFailure(429, {}, openai_body(SECRET, "insufficient_quota", "insufficient_quota")),
            AgentUnavailable,
            "{name} request failed: quota exceeded",
        ),
        (
            HttpFailure(404, {}, openai_body(SECRET, "invalid_request_error", "model_not_found")),
            AgentUnavailable,
            "{name} rejected the request: HTTP 404 (model_not_found)",
        ),
        (
            HttpFailure(422, {}, {"error": {"message": SECRET, "type": "has spaces: not an identifier"}}),
            AgentUnavailable,
            "{name} rejected the request: HTTP 422",
        ),
        (
            StreamFailure(anthropic_body("overloaded_error", SECRET)),
            AgentUnavailable,
            "{name} request failed: error in the reply stream (overloaded_error)",
        ),
        (
            UnreadableReply("a response that is not JSON"),
            AgentUnavailable,
            "{name} returned a response that is not JSON",
        ),
        (
            UnexpectedFailure("APIResponseValidationError"),
            AgentUnavailable,
            "{name} request failed: unexpected client error",
        ),
    ],
)
@pytest.mark.parametrize(("provider", "name"), [("openai", "OpenAI"), ("anthropic", "Anthropic")])
def test_each_failure_is_one_error_whichever_the_provider(
    failure: object, error_class: type[AgentError], detail: str, provider: str, name: str
) -> None:
    error = agent_error(provider, failure)  # type: ignore[arg-type]

    assert type(error) is error_class
    assert error.detail == detail.format(name=name)
    assert error.provider == provider
    assert error.usage is None
    assert SECRET not in repr(error)


@pytest.mark.parametrize(("header", "seconds"), [("20", 20), ("1.5", 2), (None, 10), ("soon", 10)])
def test_a_rate_limit_carries_the_retry_after_it_came_with(header: str | None, seconds: int) -> None:
    headers = {"retry-after": header} if header else {}
    error = agent_error("anthropic", HttpFailure(429, headers, anthropic_body("rate_limit_error", "slow down")))

    assert isinstance(error, AgentRateLimited)
    assert error.retry_after == seconds
    assert error.detail == "Anthropic is rate limiting requests"


def test_the_log_line_names_status_request_and_error_code_but_never_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failure = HttpFailure(400, {}, openai_body(SECRET, "invalid_request_error", "invalid_value"), "req_abc123")
    with caplog.at_level(logging.WARNING, logger="chatcore.adapters.openai"):
        agent_error("openai", failure)

    [record] = caplog.records
    assert record.name == "chatcore.adapters.openai"
    assert record.getMessage() == "openai request failed with HTTP 400"
    fields = {k: getattr(record, k) for k in ("event", "provider", "status", "request_id", "error_type", "error_code")}
    assert fields == {
        "event": "agent_error",
        "provider": "openai",
        "status": 400,
        "request_id": "req_abc123",
        "error_type": "invalid_request_error",
        "error_code": "invalid_value",
    }
    assert SECRET not in caplog.text


def test_a_rate_limit_and_a_timeout_are_not_logged_as_failures(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        agent_error("openai", HttpFailure(429, {}, openai_body("slow", "requests", "rate_limit_exceeded")))
        agent_error("openai", TransportFailure.TIMEOUT)
    assert not caplog.records


def test_usage_the_provider_billed_stays_on_the_error() -> None:
    billed = Usage(input_tokens=1200, cached_read_tokens=1000)
    error = agent_error("anthropic", StreamFailure(anthropic_body("overloaded_error", "Overloaded")), usage=billed)
    assert error.usage == billed
