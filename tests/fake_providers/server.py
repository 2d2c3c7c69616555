"""FakeProviderServer: a real HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats.

It runs uvicorn in a background thread with its own event loop, so the SDKs inside the app under
test reach it over a real socket exactly as they reach the providers: headers, status codes, bodies,
timeouts and refused connections all behave as in production. It records every request, and
failures can be queued (``fail_next("rate_limit")``) to check how each one reaches the client.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, get_args

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import anthropic_wire, openai_wire

Provider = Literal["openai", "anthropic"]
FailureKind = Literal["rate_limit", "server_error", "unauthorized", "context_length", "slow", "stream_error"]
FAILURE_KINDS: Final[tuple[FailureKind, ...]] = get_args(FailureKind)
START_TIMEOUT_SECONDS: Final = 10.0
STREAM_WRITE_BYTES: Final = 512
"""Bytes per write of a streamed reply: events split across reads, as they arrive from a provider."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived: which API, its headers (lower-cased names) and its JSON body."""

    provider: Provider
    path: str
    headers: dict[str, str]
    body: Any


class FakeProviderServer:
    """Both providers' APIs on one port: OpenAI under ``{url}/v1``, Anthropic at ``{url}`` (the SDKs add ``/v1``).

    A request with ``"stream": true`` is answered with the API's event stream (the same reply, in pieces;
    ``stream_piece_chars`` sets the size of the text pieces, else a word each). Usage is reported like the
    APIs do, with ``cache_read_tokens`` of each prompt read from the prompt cache and (Anthropic only)
    ``cache_write_tokens`` written to it. ``retry_after`` is the Retry-After a rate limit carries; a
    ``slow`` failure answers after ``slow_seconds`` (cut short when the server stops, so no test waits for
    it); a ``stream_error`` sends the first piece of a streamed reply and then the API's error event (a
    request that is not streamed gets the server error instead).
    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        *,
        retry_after: int = 7,
        slow_seconds: float = 10.0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        stream_piece_chars: int | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.stream_piece_chars = stream_piece_chars
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: deque[FailureKind] = deque()
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- control, from the test's thread ----------------------------------------------------------------------

    def fail_next(self, kind: FailureKind, times: int = 1) -> None:
        """Answer the next ``times`` requests (either API) with failure ``kind``."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of {FAILURE_KINDS}")
        with self._lock:
            self._failures.extend([kind] * times)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def bodies(self, provider: Provider) -> list[dict[str, Any]]:
        """The JSON bodies one API received, oldest first."""
        return [r.body for r in self.requests if r.provider == provider]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failures.clear()

    # --- lifetime ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="fake-provider", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake provider server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT_SECONDS)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> FakeProviderServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # --- the HTTP side, on the server's thread ----------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(openai_wire.PATH, self._openai, methods=["POST"]),
                Route(anthropic_wire.PATH, self._anthropic, methods=["POST"]),
            ]
        )

    async def _receive(self, provider: Provider, request: Request) -> tuple[Any, FailureKind | None]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(provider, request.url.path, headers, body))
            failure = self._failures.popleft() if self._failures else None
        if failure == "slow":
            await asyncio.to_thread(self._stopping.wait, self.slow_seconds)  # cut short by stop()
            failure = None
        return body, failure

    async def _openai(self, request: Request) -> Response:
        body, failure = await self._receive("openai", request)
        request_id = f"req_{secrets.token_hex(16)}"
        headers = {"x-request-id": request_id, "openai-processing-ms": "12"}
        key = openai_wire.check_auth(dict(request.headers))
        streamed = isinstance(body, dict) and body.get("stream") is True
        if failure == "stream_error" and not streamed:
            failure = "server_error"
        if failure is not None and failure != "stream_error":
            status, error = openai_wire.failure(failure, body, key)
            if status == 429:
                headers["retry-after"] = str(self.retry_after)
            return JSONResponse(error, status, headers)
        if key is None:
            error = openai_wire.error_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
            return JSONResponse(error, 401, headers)
        try:
            openai_wire.validate(body)
        except openai_wire.OpenAIRequestError as problem:
            error = openai_wire.error_body(str(problem), "invalid_request_error", param=problem.param)
            return JSONResponse(error, 400, headers)
        whole = openai_wire.completion(body, openai_wire.decide(body), cached_tokens=self.cache_read_tokens)
        if not streamed:
            return JSONResponse(whole, 200, headers)
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        chunks = openai_wire.chunks(whole, include_usage=include_usage, piece_chars=self.stream_piece_chars)
        if failure == "stream_error":
            chunks = [*chunks[:2], openai_wire.STREAM_ERROR]
        return _event_stream(openai_wire.event_stream(chunks, done=failure is None), headers)

    async def _anthropic(self, request: Request) -> Response:
        body, failure = await self._receive("anthropic", request)
        request_id = f"req_011{secrets.token_hex(12)}"
        headers = {"request-id": request_id}
        key = anthropic_wire.check_auth(dict(request.headers))
        streamed = isinstance(body, dict) and body.get("stream") is True
        if failure == "stream_error" and not streamed:
            failure = "server_error"
        if failure is not None and failure != "stream_error":
            status, error = anthropic_wire.failure(failure, key, request_id)
            if status == 429:
                headers["retry-after"] = str(self.retry_after)
            return JSONResponse(error, status, headers)
        if key is None:
            error = anthropic_wire.error_body("authentication_error", "x-api-key header is required", request_id)
            return JSONResponse(error, 401, headers)
        try:
            anthropic_wire.validate(body)
        except anthropic_wire.AnthropicRequestError as problem:
            return JSONResponse(
                anthropic_wire.error_body("invalid_request_error", str(problem), request_id), 400, headers
            )
        whole = anthropic_wire.message(
            body,
            anthropic_wire.decide(body),
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )
        if not streamed:
            return JSONResponse(whole, 200, headers)
        events = anthropic_wire.events(whole, piece_chars=self.stream_piece_chars)
        if failure == "stream_error":
            events = [*events[:4], anthropic_wire.STREAM_ERROR]
        return _event_stream(anthropic_wire.event_stream(events), headers)


def _event_stream(content: bytes, headers: dict[str, str]) -> Response:
    """A ``text/event-stream`` reply, sent as the events' bytes in pieces like a provider streams them."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(content), STREAM_WRITE_BYTES):
            yield content[start : start + STREAM_WRITE_BYTES]

    return StreamingResponse(pieces(), 200, headers, media_type="text/event-stream")
