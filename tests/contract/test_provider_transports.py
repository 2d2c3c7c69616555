"""The provider transports over real sockets: connection reuse, concurrency, streamed bodies, what failures become.

``SpreadConnectionPools``: where requests go and its counts. aiohttp's (``providers.aiohttp_transport``): the same
HTTP behaviour, and every failure as the httpx2 exception httpx2's own transport raises for it (the
SDKs turn those into their timeout or connection errors, so 504 or 502). The server is a few lines
of asyncio speaking HTTP/1.1 with keep-alive; it counts the TCP connections it accepted, holds a
``/hold`` request until the test releases it, and misbehaves on ``/drop``, ``/cut`` and ``/slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2
import pytest
import respx

from chatcore.adapters.providers.transports import SpreadConnectionPools, provider_transport


class KeepAliveServer:
    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()
        self.held = 0
        self._holding = asyncio.Condition()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def holding(self, count: int) -> None:
        async with self._holding:
            await asyncio.wait_for(self._holding.wait_for(lambda: self.held >= count), 10)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):  # the client hung up
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1]
                    length = next(
                        (
                            int(line.split(b":", 1)[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    await reader.readexactly(length)
                    if path.startswith(b"/drop"):  # read the request, answer nothing, close
                        return
                    if path == b"/cut":  # promise 100 bytes, send 10, close
                        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        await writer.drain()
                        return
                    if path == b"/slow":
                        await self.release.wait()  # the fixture releases it when the test ends
                    if path == b"/hold":
                        async with self._holding:
                            self.held += 1
                            self._holding.notify_all()
                        await self.release.wait()
                    body = b'{"ok": true}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                    await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    served = KeepAliveServer()
    await served.start()
    yield served
    served.release.set()
    await served.stop()


async def test_requests_one_at_a_time_reuse_one_connection_of_the_first_pool(server: KeepAliveServer) -> None:
    transport = SpreadConnectionPools(shards=4)
    async with httpx2.AsyncClient(transport=transport) as client:
        for _ in range(10):
            response = await client.post(f"{server.url}/v1", content=b"{}")
            assert response.json() == {"ok": True}
            assert transport.in_flight == (0, 0, 0, 0)
    assert server.connections == 1


async def test_concurrent_requests_spread_over_the_pools_and_are_counted_until_closed(server: KeepAliveServer) -> None:
    transport = SpreadConnectionPools(shards=4)
    async with httpx2.AsyncClient(transport=transport) as client:
        held = [asyncio.create_task(client.post(f"{server.url}/hold")) for _ in range(8)]
        await server.holding(8)
        assert transport.in_flight == (2, 2, 2, 2)
        server.release.set()
        responses = await asyncio.gather(*held)
        assert all(r.status_code == 200 for r in responses)
        assert transport.in_flight == (0, 0, 0, 0)
    assert server.connections == 8


async def test_a_streamed_response_counts_until_it_is_read_or_closed(server: KeepAliveServer) -> None:
    transport = SpreadConnectionPools(shards=2)
    async with httpx2.AsyncClient(transport=transport) as client:
        async with client.stream("GET", f"{server.url}/v1") as response:
            assert transport.in_flight == (1, 0)
            assert [chunk async for chunk in response.aiter_bytes()] == [b'{"ok": true}']
            assert transport.in_flight == (0, 0)  # read to the end: its connection is free again
        async with client.stream("GET", f"{server.url}/v1"):
            assert transport.in_flight == (1, 0)
        assert transport.in_flight == (0, 0)
    assert server.connections == 1


async def test_a_failed_request_is_not_left_counted() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()  # nothing listens on the port any more
    transport = SpreadConnectionPools(shards=2)
    async with httpx2.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/v1")
        assert transport.in_flight == (0, 0)


async def test_the_limits_are_shared_among_the_pools(server: KeepAliveServer) -> None:
    transport = SpreadConnectionPools(shards=2, limits=httpx2.Limits(max_connections=2, max_keepalive_connections=2))
    async with httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(5.0, pool=0.2)) as client:
        held = [asyncio.create_task(client.post(f"{server.url}/hold")) for _ in range(2)]
        await server.holding(2)
        with pytest.raises(httpx2.PoolTimeout):  # one connection per pool, both busy
            await client.post(f"{server.url}/hold")
        server.release.set()
        await asyncio.gather(*held)


async def test_pytest_httpx2_still_intercepts_every_request(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post("https://api.example.test/v1").respond(json={"mocked": True})
    async with httpx2.AsyncClient(transport=SpreadConnectionPools()) as client:
        replies = await asyncio.gather(*(client.post("https://api.example.test/v1") for _ in range(5)))
    assert [r.json() for r in replies] == [{"mocked": True}] * 5
    assert route.call_count == 5


def test_at_least_one_pool() -> None:
    with pytest.raises(ValueError, match="shards"):
        SpreadConnectionPools(shards=0)


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_both_transports_reuse_a_kept_alive_connection_and_serve_concurrent_requests(
    server: KeepAliveServer, kind: str
) -> None:
    async with httpx2.AsyncClient(transport=provider_transport(kind)) as client:  # type: ignore[arg-type]
        for _ in range(5):
            response = await client.post(f"{server.url}/v1", content=b'{"model": "m"}')
            assert (response.status_code, response.json()) == (200, {"ok": True})
        assert server.connections == 1
        held = [asyncio.create_task(client.post(f"{server.url}/hold")) for _ in range(4)]
        await server.holding(4)
        server.release.set()
        assert [r.json() for r in await asyncio.gather(*held)] == [{"ok": True}] * 4
        async with client.stream("GET", f"{server.url}/v1") as streamed:
            assert b"".join([chunk async for chunk in streamed.aiter_bytes()]) == b'{"ok": true}'
    assert server.connections == 4  # the first one again, plus three more while four were held


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="aiohttp, httpx"):
        provider_transport("curl")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_connection_dropped_without_an_answer_is_a_protocol_error_not_a_timeout(
    server: KeepAliveServer, kind: str
) -> None:
    async with httpx2.AsyncClient(transport=provider_transport(kind)) as client:  # type: ignore[arg-type]
        with pytest.raises(httpx2.RemoteProtocolError) as raised:
            await client.post(f"{server.url}/drop", content=b"{}")
    assert raised.value.request.url.path == "/drop"


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_body_cut_short_is_a_network_or_protocol_error_not_a_timeout(
    server: KeepAliveServer, kind: str
) -> None:
    async with httpx2.AsyncClient(transport=provider_transport(kind)) as client:  # type: ignore[arg-type]
        with pytest.raises((httpx2.NetworkError, httpx2.RemoteProtocolError)) as raised:
            await client.get(f"{server.url}/cut")
    assert not isinstance(raised.value, httpx2.TimeoutException)


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_refused_connection_is_a_connect_error(kind: str) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with httpx2.AsyncClient(transport=provider_transport(kind)) as client:  # type: ignore[arg-type]
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/v1")


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_slow_answer_is_a_read_timeout(server: KeepAliveServer, kind: str) -> None:
    async with httpx2.AsyncClient(transport=provider_transport(kind), timeout=0.3) as client:  # type: ignore[arg-type]
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(f"{server.url}/slow")


async def test_the_aiohttp_transport_is_what_the_openai_agent_sends_through(server: KeepAliveServer) -> None:
    """An agent on it maps a dropped connection to AgentUnavailable (502), not AgentTimeout (504)."""
    from chatcore.adapters.openai.agent import OpenAIChatAgent
    from chatcore.errors import AgentUnavailable
    from chatcore.model import AgentRequest, ChatMessage

    agent = OpenAIChatAgent(
        api_key="k", base_url=f"{server.url}/drop", max_retries=1, transport=provider_transport("aiohttp")
    )
    try:
        with pytest.raises(AgentUnavailable):
            await agent.complete(AgentRequest(system_prompt="", messages=(ChatMessage.user("hi"),), tools=()))
    finally:
        await agent.aclose()
    assert server.connections == 2  # the first attempt and the SDK's one retry
