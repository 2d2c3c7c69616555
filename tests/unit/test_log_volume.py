"""Log lines cost CPU on every turn: the HTTP clients' per-request INFO lines are dropped above DEBUG."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from chatcore.entrypoints.logging import HTTP_CLIENT_LOGGERS, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in HTTP_CLIENT_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, previous in levels.items():
        logging.getLogger(name).setLevel(previous)


@pytest.mark.usefixtures("restore_logging")
def test_http_client_request_lines_are_dropped_at_info_but_their_warnings_kept() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)

    logging.getLogger("httpx2").info('HTTP Request: POST http://model/v1/chat/completions "HTTP/1.1 200 OK"')
    logging.getLogger("httpx").warning("connection pool is full")
    logging.getLogger("chatcore.service").info("chat turn", extra={"event": "chat_turn"})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "HTTP Request" not in stream.getvalue()
    assert "connection pool is full" in lines[0]


@pytest.mark.usefixtures("restore_logging")
def test_at_debug_the_http_client_lines_are_back() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)

    logging.getLogger("httpx2").info('HTTP Request: POST http://model/v1/chat/completions "HTTP/1.1 200 OK"')

    assert "HTTP Request" in stream.getvalue()
