"""Structured logs: one JSON object a line, from structlog and stdlib loggers alike, secrets and message text kept out.

``configure_logging`` is called once per process by ``chatcore serve`` and by the app factory uvicorn's
workers use. Stdlib records (the domain's turn line, uvicorn, SQLAlchemy, SDKs) go through the same
processors as structlog's, with their ``extra`` fields as keys, and every line carries the
``request_id`` bound by ``RequestIdMiddleware`` through ``structlog.contextvars``.

Redaction is the last step before rendering, so it holds whatever a call site passes: values under
secret-looking keys (authorization, token, password, api_key, secret, cookie) are masked at every
level; bearer tokens, JWTs and provider keys inside any string are masked too; and message text
(content, prompt, arguments…) is masked unless the line is a DEBUG one.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO, cast

import msgspec
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from chatcore.entrypoints.settings import LOG_FORMATS, LogFormat

REDACTED = "[redacted]"

SECRET_KEY = re.compile(
    r"authori[sz]ation|passw(or)?d|secret|api[_-]?key|token|cookie|credential|private[_-]?key", re.IGNORECASE
)
"""Keys whose string values are secrets. Numbers under such keys (``prompt_tokens: 812``) are kept."""

TEXT_KEYS = frozenset(
    {"content", "text", "message", "message_text", "messages", "prompt", "system_prompt", "arguments", "body"}
)
"""Keys that carry what users or models wrote: shown at DEBUG only."""

SECRET_IN_TEXT = re.compile(
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]+"  # an Authorization header's credentials
    r"|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # a JWT anywhere
    r"|\bsk-[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic style API keys
)

ACCESS_LOGGER = "uvicorn.access"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", ACCESS_LOGGER, "uvicorn.asgi")
HTTP_CLIENT_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")
"""The provider SDKs' HTTP clients log every request at INFO; above DEBUG only their warnings are kept, since the
turn's own line already carries the model's time and calls (and each extra line is CPU on every turn)."""
_STDLIB_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
"""LogRecord attributes that are not ``extra`` fields; ``color_message`` is uvicorn's ANSI copy of the message."""


class _ChatcoreHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``configure_logging`` installs, so calling it again replaces it instead of doubling lines."""


def default_format(stream: TextIO) -> LogFormat:
    """JSON for machines (a pipe, a file, a log collector); readable lines on a terminal."""
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


def configure_logging(
    level: str | int = "INFO",
    fmt: LogFormat | None = None,
    *,
    stream: TextIO | None = None,
    access_log: bool = False,
) -> logging.Handler:
    """Route structlog and the stdlib root logger to one handler on ``stream`` (stdout); returns that handler.

    ``access_log``: uvicorn's line per request (``CHATCORE_ACCESS_LOG``). Without it the ``uvicorn.access``
    logger has no handler to reach, which uvicorn checks once per connection and then skips the line entirely.
    Calling it again replaces the previous configuration (the app factory and ``serve`` may both call it).
    """
    stream = stream if stream is not None else sys.stdout
    fmt = fmt or default_format(stream)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    numeric_level = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    stdlib_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_record_extras,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=default_format(stream) == "console", exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=stdlib_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # plain traceback text: never local variables
            redact,
            renderer,
        ],
    )
    # Fields no line of ours shows, so no record computes them (the logging HOWTO's "Optimization" list): the
    # caller's frame (a stack walk per line), thread, process and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _ChatcoreHandler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ChatcoreHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in UVICORN_LOGGERS:  # uvicorn's own handlers would print a second, unstructured line
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = access_log or name != ACCESS_LOGGER
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if numeric_level <= logging.DEBUG else logging.WARNING)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


_JSON = msgspec.json.Encoder(enc_hook=repr)


def _json_line(event_dict: Any, default: Any = None, **_: Any) -> str:
    """structlog's JSONRenderer serializer: msgspec instead of ``json.dumps`` (a turn's line is a third cheaper).

    Values msgspec cannot encode are written as their ``repr``, as structlog's own fallback does; a line it
    refuses as a whole (a dict with keys of an odd type, say) goes through ``json.dumps`` instead.
    """
    try:
        return _JSON.encode(event_dict).decode()
    except (TypeError, ValueError):
        return json.dumps(event_dict, default=repr)


def add_record_extras(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's ``extra={...}`` fields as keys; an ``event`` extra names the line, its text goes to ``msg``.

    Runs after ``merge_contextvars``: an extra named like a bound key (a provider's own ``request_id``) does not
    replace the request's; it is kept as ``extra_<key>``.
    """
    record = event_dict.get("_record")
    if not isinstance(record, logging.LogRecord):
        return event_dict
    bound = structlog.contextvars.get_contextvars()
    for key, value in record.__dict__.items():
        if key in _STDLIB_RESERVED or key.startswith("_"):
            continue
        if key == "event" and isinstance(value, str):
            if value != event_dict.get("event"):
                event_dict["msg"] = event_dict.get("event")
            event_dict["event"] = value
        elif key in bound and bound[key] != value:
            event_dict[f"extra_{key}"] = value
        else:
            event_dict[key] = value
    return event_dict


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Mask secrets always, and message text unless the line is DEBUG (see the module docstring)."""
    level = str(event_dict.get("level", method_name)).lower()
    return _redacted(event_dict, keep_text=level == "debug")


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether ``key`` names a secret; cached, as a log line's keys are nearly always the same few."""
    return SECRET_KEY.search(key) is not None


def _redacted(mapping: MutableMapping[str, Any], *, keep_text: bool) -> MutableMapping[str, Any]:
    for key, value in list(mapping.items()):
        secret = _secret_key(key) and not isinstance(value, int | float | bool | None)
        if secret or (key in TEXT_KEYS and not keep_text and value not in (None, "")):
            mapping[key] = REDACTED
        else:
            mapping[key] = _scrubbed(value, keep_text=keep_text)
    return mapping


def _may_hold_secret(text: str) -> bool:
    """Whether ``SECRET_IN_TEXT`` could match: each of its forms has a fixed part, found faster than by the regex."""
    return "eyJ" in text or "sk-" in text or "bearer" in text.lower()


def _scrubbed(value: Any, *, keep_text: bool) -> Any:
    if isinstance(value, str):
        return SECRET_IN_TEXT.sub(REDACTED, value) if _may_hold_secret(value) else value
    if isinstance(value, dict):
        return _redacted(dict(value), keep_text=keep_text)
    if isinstance(value, list | tuple):
        return [_scrubbed(item, keep_text=keep_text) for item in cast(Iterable[Any], value)]
    return value
