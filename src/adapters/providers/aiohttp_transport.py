"""Model calls sent by aiohttp: the SDKs' own aiohttp transport, with a dropped connection reported as what it is.

Both SDKs ship httpx-aiohttp's transport (vendored, behind their ``aiohttp`` extra) for their
``DefaultAioHttpClient``; ``aiohttp_transport`` builds the one of the SDK in use, so an Anthropic
deployment never loads the OpenAI SDK and the other way round. (It is the SDKs' private module,
imported by path; the contract tests in ``tests/contract/test_provider_transports.py`` hold it to its
behaviour.)

That transport maps every ``aiohttp.ClientConnectionError`` its table has no closer entry for to
``httpx2.ConnectTimeout``, and its lookup keeps that entry even for a refused connection, so a server
that is down, closes the connection without answering or resets it would reach the SDKs as a timeout
(``APITimeoutError``: 504 here) instead of a connection error (``APIConnectionError``: 502), which is
what httpx2's own transport makes of each. ``RefusedAndDroppedAsConnectErrors`` puts that right, for the request
and while its body is read; aiohttp's real timeouts raise ``TimeoutError`` and keep their mapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx2

from chatcore.adapters.providers.transports import SDK_LIMITS, Sdk


def aiohttp_transport(sdk: Sdk = "openai", *, limits: httpx2.Limits = SDK_LIMITS) -> httpx2.AsyncBaseTransport:
    inner: httpx2.AsyncBaseTransport
    if sdk == "openai":
        from openai._vendor.httpx_aiohttp import AiohttpTransport as OpenAITransport

        inner = OpenAITransport(limits=limits)
    elif sdk == "anthropic":
        from anthropic._vendor.httpx_aiohttp import AiohttpTransport as AnthropicTransport

        inner = AnthropicTransport(limits=limits)
    else:
        raise ValueError(f"no aiohttp transport for {sdk!r}")
    return RefusedAndDroppedAsConnectErrors(inner)


class RefusedAndDroppedAsConnectErrors(httpx2.AsyncBaseTransport):
    """``inner``'s requests, with a connection that failed or dropped raised as a connection error (see the module)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        with _connection_errors_as_such():
            response = await self._inner.handle_async_request(request)
        if isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = _Body(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.contextmanager
def _connection_errors_as_such() -> Iterator[None]:
    try:
        yield
    except httpx2.ConnectTimeout as error:
        cause = error.__cause__
        if not isinstance(cause, aiohttp.ClientConnectionError) or isinstance(cause, TimeoutError):
            raise
        message = str(error) or type(cause).__name__
        if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unreachable, DNS
            raise httpx2.ConnectError(message) from cause
        if isinstance(cause, aiohttp.ServerDisconnectedError):
            raise httpx2.RemoteProtocolError(message) from cause
        raise httpx2.ReadError(message) from cause


class _Body(httpx2.AsyncByteStream):
    """The response body, with the same correction while it is read (an iterator, not a generator around one)."""

    def __init__(self, stream: httpx2.AsyncByteStream) -> None:
        self._stream = stream
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._stream.__aiter__()
        with _connection_errors_as_such():
            return await self._chunks.__anext__()

    async def aclose(self) -> None:
        with _connection_errors_as_such():
            await self._stream.aclose()
