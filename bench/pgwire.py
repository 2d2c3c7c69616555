"""A PostgreSQL proxy that counts, per server, the statements and transactions it sends, as they happen.

Why not PostgreSQL's own counters: ``pg_stat_statements`` needs ``shared_preload_libraries`` (a restart
of a server other clients share); and ``pg_stat_database``'s ``xact_commit`` / ``xact_rollback`` are
updated by each backend at most once a second, an idle backend's last counts up to ten seconds later,
so deltas around one scenario would take part of the one before and leave part of their own to the next.
``log_statement`` would make PostgreSQL write a line per statement, on the CPU the benchmark measures.
The proxy sees the same thing on the wire, the moment it happens, and costs the servers nothing (its own
CPU is counted with the harness'). The benchmark checks its transaction total against ``pg_stat_database``
at the end of each run, once every backend has exited and flushed its counters.

What is counted (PostgreSQL's frontend/backend protocol 3.0; message = type byte, int32 length, body):

- a *statement* is an ``Execute`` message (extended protocol, what asyncpg uses) or a ``Query`` message
  (simple protocol: ``BEGIN``, ``COPY``, a script);
- a *round trip* is a ``ReadyForQuery`` the server sends after a client's ``Sync`` or ``Query``;
- a *transaction* is such a round trip that carried work and left the session idle (status ``I``): an
  implicit transaction (an autocommit statement) or the end of a ``BEGIN`` … ``COMMIT``/``ROLLBACK``
  block; and the start of each session, which PostgreSQL runs as a transaction of its own (reading the
  catalogs). That is what ``xact_commit + xact_rollback`` count (``tests/test_pgwire.py`` checks it).

Clients asking for TLS or GSS encryption are told no (``N``) by the proxy itself, so the protocol stays
readable; the benchmark only talks to 127.0.0.1, where the servers connect without TLS anyway.

Run: ``python -m bench.pgwire --upstream 127.0.0.1:5432 --listen floor=9301 --listen chatcore=9302
--port 9300``; ``GET /counts`` on ``--port`` answers ``{"floor": {"statements": …}, …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

import msgspec

SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
REFUSED: Final = b"N"
"""The one-byte answer to an SSL or GSS encryption request: carry on unencrypted."""

QUERY, EXECUTE, SYNC, READY_FOR_QUERY = (ord(kind) for kind in "QESZ")
WORK: Final = frozenset(ord(kind) for kind in "PBDCEF")
"""Extended-protocol messages that make the current ``Sync`` cycle start a transaction."""
IDLE: Final = ord("I")


@dataclass(slots=True)
class Counts:
    connections: int = 0
    statements: int = 0
    transactions: int = 0
    round_trips: int = 0

    def minus(self, earlier: Counts) -> Counts:
        return Counts(*(now - before for now, before in zip(self.astuple(), earlier.astuple(), strict=True)))

    def astuple(self) -> tuple[int, int, int, int]:
        return self.connections, self.statements, self.transactions, self.round_trips


class MessageReader:
    """Finds message boundaries in one direction of a connection, however the bytes arrive.

    Calls ``on_message(type, first body byte or -1)`` per message; the first body byte is read only for
    the message types in ``first_byte_of`` (``ReadyForQuery``'s transaction status). ``skip`` passes over
    bytes that are not typed messages (the client's untyped startup packet).
    """

    __slots__ = ("_first_byte_of", "_head", "_on_message", "_skip")

    def __init__(self, on_message: Callable[[int, int], None], first_byte_of: frozenset[int] = frozenset()) -> None:
        self._on_message = on_message
        self._first_byte_of = first_byte_of
        self._head = bytearray()
        self._skip = 0

    def skip(self, count: int) -> None:
        self._skip += count

    def feed(self, data: bytes) -> None:
        position, end = 0, len(data)
        head = self._head
        while position < end:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            wanted = 6 if len(head) >= 5 else 5
            step = min(wanted - len(head), end - position)
            head += data[position : position + step]
            position += step
            if len(head) < wanted:
                break
            kind, body = head[0], int.from_bytes(head[1:5], "big") - 4
            if wanted == 5 and kind in self._first_byte_of and body > 0:
                continue  # read the status byte first
            self._on_message(kind, head[5] if wanted == 6 else -1)
            self._skip = body - (wanted - 5)
            head.clear()


class _Connection:
    """One client connection and its upstream one; counts into ``counts`` and forwards every byte unchanged."""

    def __init__(self, counts: Counts, upstream: tuple[str, int]) -> None:
        self.counts = counts
        self.upstream_address = upstream
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._startup = bytearray()
        self._started = False
        self._cycles: collections.deque[bool] = collections.deque()
        self._work = False
        self.client_messages = MessageReader(self._client_message)
        self.server_messages = MessageReader(self._server_message, frozenset({READY_FOR_QUERY}))

    # --- client side ---------------------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if not self._started:
            data = self._after_encryption_requests(data)
            if not data:
                return
        self.client_messages.feed(data)
        if self.server is not None:
            self.server.write(data)
        else:
            self._early.append(data)

    def _after_encryption_requests(self, data: bytes) -> bytes:
        """Answer SSL/GSS requests here; once the startup packet's length is known, skip it and go on typed."""
        self._startup += data
        while len(self._startup) >= 8:
            length = int.from_bytes(self._startup[0:4], "big")
            code = int.from_bytes(self._startup[4:8], "big")
            if length == 8 and code in (SSL_REQUEST, GSSENC_REQUEST):
                assert self.client is not None
                self.client.write(REFUSED)
                del self._startup[:8]
                continue
            self._started = True
            self.client_messages.skip(length)
            rest = bytes(self._startup)
            self._startup.clear()
            return rest
        return b""

    def _client_message(self, kind: int, _: int) -> None:
        if kind == QUERY:
            self.counts.statements += 1
            self._cycles.append(True)
        elif kind == SYNC:
            self._cycles.append(self._work)
            self._work = False
        elif kind in WORK:
            self._work = True
            if kind == EXECUTE:
                self.counts.statements += 1

    # --- server side ---------------------------------------------------------------------------------------

    def server_connected(self, transport: asyncio.Transport) -> None:
        self.server = transport
        for data in self._early:
            transport.write(data)
        self._early.clear()

    def server_data(self, data: bytes) -> None:
        self.server_messages.feed(data)
        if self.client is not None:
            self.client.write(data)

    def _server_message(self, kind: int, status: int) -> None:
        if kind != READY_FOR_QUERY:
            return
        if not self._cycles:  # none pending: the one that ends the session's start-up, itself a transaction
            self.counts.transactions += 1
            return
        self.counts.round_trips += 1
        if self._cycles.popleft() and status == IDLE:
            self.counts.transactions += 1

    def close(self) -> None:
        for transport in (self.client, self.server):
            if transport is not None and not transport.is_closing():
                transport.close()


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, counts: Counts, upstream: tuple[str, int]) -> None:
        self.connection = _Connection(counts, upstream)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connection.client = client
        self.connection.counts.connections += 1
        self._connecting = asyncio.ensure_future(self._connect(client))

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.connection.upstream_address
        try:
            await loop.create_connection(lambda: _ServerProtocol(self.connection), host, port)
        except OSError:
            client.close()

    def data_received(self, data: bytes) -> None:
        self.connection.client_data(data)

    def pause_writing(self) -> None:
        if self.connection.server is not None:
            self.connection.server.pause_reading()

    def resume_writing(self) -> None:
        if self.connection.server is not None:
            self.connection.server.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection.server_connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.connection.server_data(data)

    def pause_writing(self) -> None:
        if self.connection.client is not None:
            self.connection.client.pause_reading()

    def resume_writing(self) -> None:
        if self.connection.client is not None:
            self.connection.client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()


class WireCounter:
    """Listens on one port per name (127.0.0.1), forwards to ``upstream``, counts per name."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.counts: dict[str, Counts] = {}
        self._servers: list[asyncio.Server] = []

    async def listen(self, name: str, port: int = 0) -> int:
        """Start counting connections to ``port`` (0: any free one) as ``name``; the port listened on."""
        counts = self.counts.setdefault(name, Counts())
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ClientProtocol(counts, self.upstream), "127.0.0.1", port)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


def counts_from(payload: Mapping[str, Mapping[str, int]]) -> dict[str, Counts]:
    return {name: Counts(**values) for name, values in payload.items()}


class WireCounterApp:
    """``WireCounter`` in a process of its own (ASGI, for uvicorn): ``GET /counts``, ``GET /health``."""

    def __init__(self, upstream: tuple[str, int], listen: Mapping[str, int]) -> None:
        self.counter = WireCounter(upstream)
        self.listen = listen

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    for name, port in self.listen.items():
                        await self.counter.listen(name, port)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.counter.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, payload = self._answer(scope["path"])
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": msgspec.json.encode(payload)})

    def _answer(self, path: str) -> tuple[int, object]:
        if path == "/counts":
            return 200, {name: asdict(counts) for name, counts in self.counter.counts.items()}
        if path == "/health":
            return 200, {"status": "ok"}
        return 404, {"detail": "not found"}


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _listener(text: str) -> tuple[str, int]:
    name, equals, port = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT, not {text!r}")
    return name, int(port)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.pgwire", description="A counting PostgreSQL proxy.")
    parser.add_argument("--upstream", type=_address, default=("127.0.0.1", 5432), help="HOST:PORT of PostgreSQL")
    parser.add_argument("--listen", type=_listener, action="append", default=[], help="NAME=PORT (repeatable)")
    parser.add_argument("--port", type=int, required=True, help="the control port (GET /counts)")
    args = parser.parse_args(argv)
    app = WireCounterApp(args.upstream, dict(args.listen))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
