"""Structured logging: JSON lines for stdlib and structlog records, request ids from contextvars, redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from chatcore.entrypoints.logging import REDACTED, configure_logging, redact
from chatcore.entrypoints.settings import ConfigurationError, Settings

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer, with the process's logging put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_stdlib_record_becomes_one_json_line_with_its_extras_and_the_bound_request_id(
    log_stream: io.StringIO,
) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        logging.getLogger("chatcore.service").info(
            "chat turn", extra={"event": "chat_turn", "outcome": "ok", "turn_ms": 12.5, "tools": ["add_task"]}
        )
    # uvicorn adds an ANSI copy of its messages; (a test logger: other tests may have set uvicorn's levels)
    logging.getLogger("chatcore.test").info("after the request", extra={"color_message": "\x1b[1mafter\x1b[0m"})

    turn, after = lines(log_stream)
    assert turn["event"] == "chat_turn"
    assert turn["msg"] == "chat turn"
    assert turn["request_id"] == "req-1"
    assert (turn["outcome"], turn["turn_ms"], turn["tools"]) == ("ok", 12.5, ["add_task"])
    assert (turn["level"], turn["logger"]) == ("info", "chatcore.service")
    assert turn["timestamp"].endswith("Z")
    assert after["event"] == "after the request"
    assert "request_id" not in after
    assert "color_message" not in after


def test_an_extra_named_like_a_bound_key_does_not_replace_the_request_id(log_stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(request_id="ours"):
        logging.getLogger("chatcore.adapters.openai").warning("provider failed", extra={"request_id": "req_theirs"})

    (line,) = lines(log_stream)
    assert (line["request_id"], line["extra_request_id"]) == ("ours", "req_theirs")


def test_structlog_loggers_share_the_handler_and_levels_filter(log_stream: io.StringIO) -> None:
    log = structlog.stdlib.get_logger("chatcore.test")
    log.debug("hidden")
    log.info("shown", conversation_id="c-1")

    (only,) = lines(log_stream)
    assert (only["event"], only["conversation_id"], only["logger"]) == ("shown", "c-1", "chatcore.test")


def test_exceptions_are_rendered_as_traceback_text(log_stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("chatcore.http").exception("unhandled error")

    (line,) = lines(log_stream)
    assert "RuntimeError: boom" in line["exception"]


def test_secrets_and_message_text_never_reach_an_info_line(log_stream: io.StringIO) -> None:
    logging.getLogger("litestar").info(
        "headers %s",
        {"authorization": f"Bearer {JWT}"},
        extra={
            "authorization": f"Bearer {JWT}",
            "api_key": "sk-abcdefghijklmnopqrstuvwx",
            "headers": {"Cookie": "session=1", "X-Request-ID": "r"},
            "content": "buy milk for the party",
            "prompt_tokens": 812,
        },
    )
    (line,) = lines(log_stream)
    text = json.dumps(line)
    assert JWT not in text
    assert "sk-abcdefghijklmnopqrstuvwx" not in text
    assert "buy milk" not in text
    assert line["authorization"] == line["api_key"] == line["content"] == REDACTED
    assert line["headers"] == {"Cookie": REDACTED, "X-Request-ID": "r"}
    assert line["prompt_tokens"] == 812
    assert REDACTED in line["event"]


def test_message_text_is_kept_at_debug_but_secrets_are_not() -> None:
    event = {"level": "debug", "event": "model request", "content": "buy milk", "token": JWT}
    assert redact(None, "debug", event) == {
        "level": "debug",
        "event": "model request",
        "content": "buy milk",
        "token": REDACTED,
    }


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(log_stream: io.StringIO) -> None:
    second = io.StringIO()
    configure_logging("INFO", "console", stream=second)
    logging.getLogger("chatcore").info("once", extra={"outcome": "ok"})

    assert log_stream.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert "outcome" in second.getvalue()


@pytest.fixture
def uvicorn_loggers() -> Iterator[None]:
    """uvicorn's loggers at NOTSET and enabled for the test: uvicorn, started by other tests, sets both."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    try:
        yield
    finally:
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled


@pytest.mark.usefixtures("uvicorn_loggers")
@pytest.mark.parametrize("access_log", [False, True])
def test_uvicorns_access_lines_reach_the_handler_only_when_asked_for(log_stream: io.StringIO, access_log: bool) -> None:
    configure_logging("INFO", "json", stream=log_stream, access_log=access_log)
    access = logging.getLogger("uvicorn.access")

    # uvicorn's protocol asks this once per connection and writes no access line at all when it is False
    assert access.hasHandlers() is access_log
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/api/u/chat", "1.1", 200)
    logging.getLogger("uvicorn.error").info("Started server process")

    assert [line["logger"] for line in lines(log_stream)] == [
        *(["uvicorn.access"] if access_log else []),
        "uvicorn.error",
    ]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml", stream=io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "json", stream=io.StringIO())


def test_settings_read_the_log_format_and_the_otlp_endpoint() -> None:
    assert Settings.from_env({}).log_format is None
    assert Settings.from_env({"CHATCORE_LOG_FORMAT": "Console"}).log_format == "console"
    with pytest.raises(ConfigurationError, match="CHATCORE_LOG_FORMAT"):
        Settings.from_env({"CHATCORE_LOG_FORMAT": "xml"})

    assert Settings.from_env({}).otlp_traces_endpoint is None
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert Settings.from_env(base).otlp_traces_endpoint == "http://collector:4318/v1/traces"
    exact = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom"}
    assert Settings.from_env(exact).otlp_traces_endpoint == "http://traces:4318/custom"
    assert Settings.from_env({**base, "OTEL_SDK_DISABLED": "true"}).otlp_traces_endpoint is None


@given(
    st.lists(
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(["bearer ", "BEARER\t", "BeArEr  ", "eyJ", ".", "sk-", "-", "_", "abcdefghijklmnop"]),
        ),
        max_size=12,
    ).map("".join)
)
def test_the_cheap_secret_check_never_skips_text_the_pattern_would_mask(text: str) -> None:
    from chatcore.entrypoints.logging import SECRET_IN_TEXT, _may_hold_secret

    if SECRET_IN_TEXT.search(text) is not None:
        assert _may_hold_secret(text)
