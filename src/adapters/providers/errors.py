"""Provider failures, classified once: what an adapter read off its SDK's error, turned into chatcore's error.

A provider adapter only extracts what went wrong — an HTTP status with its headers and JSON body, a
timeout, a connection that failed or dropped, an error event inside a reply stream, a reply it could not
read — and ``agent_error`` decides, for every provider alike, which chatcore error that is
(AgentUnavailable, AgentTimeout, AgentRateLimited with its Retry-After, ContextTooLong) and what an operator
finds in the log. Details name the provider and never echo the key, the request or the provider's own
message, which may quote either. No SDK is imported here, so each provider module keeps its SDK to itself.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias, assert_never

import httpx2

from chatcore.errors import AgentError, AgentRateLimited, AgentTimeout, AgentUnavailable, ContextTooLong
from chatcore.model import Usage

DEFAULT_RETRY_AFTER = 10
"""Seconds a client is told to wait when a rate-limited provider gave no usable Retry-After."""

PROVIDER_NAMES: Mapping[str, str] = {"openai": "OpenAI", "anthropic": "Anthropic"}
"""How a provider is named in an error's detail."""

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_CONTEXT_TOO_LONG = re.compile(
    r"maximum context length|context window|context size|context_length_exceeded"  # OpenAI, vLLM, llama.cpp
    r"|prompt is too long|exceed context limit"  # Anthropic
)
"""How the providers and compatible servers word a prompt that does not fit (alone, or with ``max_tokens``)."""


@dataclass(frozen=True, slots=True)
class HttpFailure:
    """The provider answered with an error status: the status, its headers and its body (decoded JSON, else None)."""

    status: int
    headers: Mapping[str, str]
    body: object = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreamFailure:
    """An error event inside a reply stream that had begun with 200 (its JSON), e.g. the provider overloaded."""

    body: object
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnreadableReply:
    """A 2xx reply the adapter could not read; ``what`` says how, in a few fixed words (``a response that is not
    JSON``)."""

    what: str


@dataclass(frozen=True, slots=True)
class UnexpectedFailure:
    """An SDK error of a kind the adapters do not know; ``kind`` is its class name."""

    kind: str


class TransportFailure(enum.Enum):
    TIMEOUT = "timeout"
    """No answer in time (connecting, or waiting for the reply or its next piece)."""
    CONNECT = "connect"
    """No connection: refused, unreachable, or closed before an answer."""
    DROPPED = "dropped"
    """The connection broke while the reply was being read."""


ProviderFailure: TypeAlias = HttpFailure | StreamFailure | UnreadableReply | UnexpectedFailure | TransportFailure


def agent_error(provider: str, failure: ProviderFailure, *, usage: Usage | None = None) -> AgentError:
    """The chatcore error for ``failure`` of ``provider`` ("openai", "anthropic"), logged where an operator must act.

    ``usage`` is what the provider reported having billed for the failed call, when it did (rarely).
    """
    error = _classify(provider, PROVIDER_NAMES.get(provider, provider), failure)
    error.usage = usage
    return error


def _classify(provider: str, name: str, failure: ProviderFailure) -> AgentError:
    match failure:
        case TransportFailure.TIMEOUT:
            return AgentTimeout(f"{name} request timed out", provider=provider)
        case TransportFailure.CONNECT:
            return AgentUnavailable(f"{name} request failed: could not connect", provider=provider)
        case TransportFailure.DROPPED:
            return AgentUnavailable(f"{name} request failed: the connection dropped mid-reply", provider=provider)
        case HttpFailure():
            return _classify_status(provider, name, failure)
        case StreamFailure():
            error_type, error_code, _ = _error_fields(failure.body)
            _log(
                provider, f"{provider} reply stream carried an error", None, failure.request_id, error_type, error_code
            )
            reason = error_code or error_type
            return AgentUnavailable(
                f"{name} request failed: error in the reply stream" + (f" ({reason})" if reason else ""),
                provider=provider,
            )
        case UnreadableReply():
            logger(provider).warning("%s returned %s", provider, failure.what, extra={"event": "agent_error"})
            return AgentUnavailable(f"{name} returned {failure.what}", provider=provider)
        case UnexpectedFailure():
            logger(provider).warning("%s client error: %s", provider, failure.kind)
            return AgentUnavailable(f"{name} request failed: unexpected client error", provider=provider)
        case _:
            assert_never(failure)


def _classify_status(provider: str, name: str, failure: HttpFailure) -> AgentError:
    status = failure.status
    error_type, error_code, message = _error_fields(failure.body)

    def logged(error: AgentError) -> AgentError:
        _log(
            provider,
            f"{provider} request failed with HTTP {status}",
            status,
            failure.request_id,
            error_type,
            error_code,
        )
        return error

    if status == 429 and "insufficient_quota" in (error_code, error_type):  # billing: waiting will not help
        return logged(AgentUnavailable(f"{name} request failed: quota exceeded", provider=provider))
    if status == 429:
        return AgentRateLimited(
            f"{name} is rate limiting requests", provider=provider, retry_after=retry_after_seconds(failure.headers)
        )
    if status == 401:
        return logged(AgentUnavailable(f"{name} request failed: authentication error", provider=provider))
    if status == 403:
        return logged(AgentUnavailable(f"{name} request failed: permission denied", provider=provider))
    if status == 413 or (
        status == 400 and (error_code == "context_length_exceeded" or _CONTEXT_TOO_LONG.search(message.lower()))
    ):
        return ContextTooLong(provider=provider)
    if status == 529 or error_type == "overloaded_error":
        return logged(AgentUnavailable(f"{name} request failed: overloaded (HTTP {status})", provider=provider))
    if status >= 500:
        return logged(AgentUnavailable(f"{name} request failed: server error (HTTP {status})", provider=provider))
    reason = error_code or error_type
    suffix = f" ({reason})" if reason else ""
    return logged(AgentUnavailable(f"{name} rejected the request: HTTP {status}{suffix}", provider=provider))


def _error_fields(body: object) -> tuple[str | None, str | None, str]:
    """The error's type and code (plain identifiers only) and its message, wherever the body keeps them.

    OpenAI nests them under ``error`` (``{"error": {"message", "type", "code"}}``), Anthropic too
    (``{"type": "error", "error": {"type", "message"}}``); vLLM and others put them at the top.
    """
    if not isinstance(body, dict):
        return None, None, ""
    fields = body["error"] if isinstance(body.get("error"), dict) else body
    message = fields.get("message")
    return safe_token(fields.get("type")), safe_token(fields.get("code")), message if isinstance(message, str) else ""


def _log(
    provider: str,
    text: str,
    status: int | None,
    request_id: str | None,
    error_type: str | None,
    error_code: str | None,
) -> None:
    """What an operator needs to follow up with the provider; never the message, which may quote the request."""
    logger(provider).warning(
        text,
        extra={
            "event": "agent_error",
            "provider": provider,
            "status": status,
            "request_id": safe_token(request_id),
            "error_type": error_type,
            "error_code": error_code,
        },
    )


def logger(provider: str) -> logging.Logger:
    """The provider adapter's own logger (``chatcore.adapters.openai``...)."""
    return logging.getLogger(f"chatcore.adapters.{provider}")


def retry_after_seconds(headers: Mapping[str, str], default: int = DEFAULT_RETRY_AFTER) -> int:
    """Whole seconds from a Retry-After header (seconds or an HTTP date), else ``default``."""
    value = headers.get("retry-after")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return default
        seconds = email.utils.mktime_tz(parsed) - time.time()
    if not math.isfinite(seconds):
        return default
    return max(1, math.ceil(seconds))


def token_count(value: object) -> int:
    """A token count as a provider reported it; 0 when it is missing or not a whole number (never a guess)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def safe_token(value: object) -> str | None:
    """A provider's short error code, or None when it is missing or not a plain identifier (never free text)."""
    return value if isinstance(value, str) and _SAFE_TOKEN.fullmatch(value) else None


# --- reading an SDK's exception --------------------------------------------------------------------------------


class SdkStatusError(Protocol):
    """What both SDKs' ``APIStatusError`` carry: the status, the response (headers) and its decoded body."""

    @property
    def status_code(self) -> int: ...

    @property
    def response(self) -> httpx2.Response: ...

    @property
    def body(self) -> object: ...


UsageReader: TypeAlias = Callable[[object], Usage | None]
"""A provider's reading of the ``usage`` object of its JSON (None when there is none)."""


@dataclass(frozen=True, slots=True)
class SdkErrors:
    """One provider SDK's exception classes, and how the provider reports usage: turns the SDK's (or httpx2's)
    exceptions into chatcore's errors. ``errors(exception)`` is ``agent_error(provider, failure_of(exception))``,
    with the usage an error body reported, if any."""

    provider: str
    timeout: type[BaseException]
    connection: type[BaseException]
    status: type[BaseException]
    usage_of: UsageReader

    def __call__(self, error: BaseException) -> AgentError:
        failure = self.failure_of(error)
        body = failure.body if isinstance(failure, HttpFailure | StreamFailure) else None
        return agent_error(
            self.provider, failure, usage=self.usage_of(body.get("usage")) if isinstance(body, dict) else None
        )

    def failure_of(self, error: BaseException) -> ProviderFailure:
        """What ``error`` (the SDK's, or httpx2's while a reply is read) says went wrong."""
        if isinstance(error, (self.timeout, httpx2.TimeoutException)):
            return TransportFailure.TIMEOUT
        if isinstance(error, self.connection):
            return TransportFailure.CONNECT
        if isinstance(error, httpx2.TransportError):  # raised while a body is read, after the SDK handed it over
            return TransportFailure.DROPPED
        if isinstance(error, self.status):
            status_error: SdkStatusError = error  # type: ignore[assignment]  # self.status is such a class
            response = status_error.response
            request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
            if status_error.status_code < 400:  # an error event inside a stream that began with 200
                return StreamFailure(status_error.body, request_id)
            return HttpFailure(status_error.status_code, response.headers, status_error.body, request_id)
        return UnexpectedFailure(type(error).__name__)
