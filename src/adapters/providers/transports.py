"""The HTTP under the provider SDKs: their httpx2 client, on aiohttp (the default) or on spread httpx2 pools.

aiohttp (``aiohttp_transport``) sends the SDKs' httpx2 requests with the transport the SDKs themselves
offer as ``DefaultAioHttpClient``: aiohttp parses HTTP in C and its pool hands out a connection without
walking the others, so a model call costs about half the CPU it does on httpx2's own transport
(docs/performance.md). The SDKs' retries, timeouts, headers and error classes are unchanged.

The other, for ``CHATCORE_LLM_HTTP=httpx`` and the agents' own default (``pytest-httpx2`` intercepts
it in tests): ``SpreadConnectionPools``. httpcore2's pool walks every connection it holds each time a
request joins or leaves it, and probes the socket of every idle one for readability (a ``poll``
system call through anyio's attribute lookups; pydantic/httpx2#1169, still open). Under load a
turn's model connection sits idle while the turn is in the database, so at N concurrent turns every
model call costs 2 × N of those probes: at 32 turns, 1 ms of CPU a turn. ``SpreadConnectionPools``
keeps ``shards`` ordinary pools (the SDK's limits divided among them) and sends each request on the
pool with the fewest requests in flight, the first one on a tie: each walk covers about N / shards
connections, and requests that come one at a time all reuse the first pool's connections.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Final, Literal, TypeAlias

import httpx2

from chatcore.adapters.providers.transport_choices import PROVIDER_HTTP, ProviderHttp

Sdk: TypeAlias = Literal["openai", "anthropic"]

DEFAULT_SHARDS: Final = 8
SDK_LIMITS: Final = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=5.0)
"""The connection limits both provider SDKs use for their own clients (their ``DEFAULT_CONNECTION_LIMITS``)."""


def sdk_http_client(timeout_seconds: float, transport: httpx2.AsyncBaseTransport | None) -> httpx2.AsyncClient:
    """The httpx2 client an agent hands its SDK: the SDKs' own defaults (``DefaultAsyncHttpxClient``: their
    timeout, redirects followed) on ``transport``, by default ``SpreadConnectionPools`` (which ``pytest-httpx2``
    intercepts). Both SDKs build the same client from these arguments; nothing connects until a request."""
    return httpx2.AsyncClient(
        timeout=timeout_seconds,
        follow_redirects=True,
        transport=transport or SpreadConnectionPools(),
    )


def provider_transport(
    kind: ProviderHttp = "aiohttp", *, sdk: Sdk = "openai", limits: httpx2.Limits = SDK_LIMITS
) -> httpx2.AsyncBaseTransport:
    """The transport ``CHATCORE_LLM_HTTP`` names, with the SDKs' connection limits; aiohttp's as ``sdk`` ships it."""
    if kind == "aiohttp":
        from chatcore.adapters.providers.aiohttp_transport import aiohttp_transport  # loaded only when used

        return aiohttp_transport(sdk, limits=limits)
    if kind == "httpx":
        return SpreadConnectionPools(limits=limits)
    raise ValueError(f"the provider HTTP transport must be one of {', '.join(PROVIDER_HTTP)}, not {kind!r}")


class SpreadConnectionPools(httpx2.AsyncBaseTransport):
    """``shards`` httpx2 transports sharing ``limits``; a request goes to the least busy one (see the module)."""

    def __init__(self, *, shards: int = DEFAULT_SHARDS, limits: httpx2.Limits = SDK_LIMITS) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        ssl_context = httpx2.create_ssl_context()  # loaded once, not once per pool
        share = httpx2.Limits(
            max_connections=_share(limits.max_connections, shards),
            max_keepalive_connections=_share(limits.max_keepalive_connections, shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._pools = [httpx2.AsyncHTTPTransport(verify=ssl_context, limits=share) for _ in range(shards)]
        self._in_flight = [0] * shards

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        in_flight = self._in_flight
        shard = in_flight.index(min(in_flight))
        in_flight[shard] += 1
        try:
            response = await self._pools[shard].handle_async_request(request)
        except BaseException:
            in_flight[shard] -= 1
            raise
        if isinstance(response.stream, httpx2.AsyncByteStream):  # always, from an async transport
            response.stream = _ReleasedOnClose(response.stream, lambda: _done(in_flight, shard))
        else:
            _done(in_flight, shard)
        return response

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Requests each pool is serving: sent, and their responses not yet closed."""
        return tuple(self._in_flight)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _share(limit: int | None, shards: int) -> int | None:
    return None if limit is None else max(1, math.ceil(limit / shards))


def _done(in_flight: list[int], shard: int) -> None:
    in_flight[shard] -= 1


class _ReleasedOnClose(httpx2.AsyncByteStream):
    """A response body that tells its pool's counter when it is closed: its connection is free from then on."""

    def __init__(self, stream: httpx2.AsyncByteStream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    def __aiter__(self) -> AsyncIterator[bytes]:  # the body's own iterator, not a generator around it
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close()
