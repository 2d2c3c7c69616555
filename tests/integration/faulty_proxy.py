"""FaultyTcpProxy: a TCP proxy between the app and PostgreSQL that can cut every connection and refuse new ones.

It runs asyncio in a thread of its own, so it keeps forwarding whatever the test's event loop is
doing, and is controlled from the test with plain method calls. ``cut()`` aborts every proxied
connection (a reset, as when a database host dies or a network partition starts) and answers
new connections by resetting them at once; ``refuse_new()`` keeps the open connections and answers each new one
as a PostgreSQL server at ``max_connections`` does (a FATAL ``53300 sorry, too many clients already`` after the
startup packet); ``restore()`` forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

CHUNK = 65_536
CONTROL_TIMEOUT_SECONDS = 10.0
_SSL_OR_GSS_REQUESTS = {80877103, 80877104}
"""The codes of PostgreSQL's SSLRequest and GSSENCRequest, which a client may send before its startup packet."""


def _too_many_clients() -> bytes:
    """PostgreSQL's ErrorResponse when every connection slot is taken (asyncpg: TooManyConnectionsError)."""
    fields = b"".join(
        code + text + b"\0"
        for code, text in (
            (b"S", b"FATAL"),
            (b"V", b"FATAL"),
            (b"C", b"53300"),
            (b"M", b"sorry, too many clients already"),
        )
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


class FaultyTcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self._cut = False
        self._refusing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()

    # --- control, from the test's thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_TIMEOUT_SECONDS)
        self._loop.close()

    def cut(self) -> None:
        """Reset every open connection, and every new one until ``restore``."""
        self._call(self._set_cut(True))

    def refuse_new(self, *, drop_open: bool = False) -> None:
        """Refuse every new connection with "too many clients" until ``restore``; keep forwarding the open ones,
        or with ``drop_open`` reset them (a server restarted and at once full again)."""
        self._call(self._set_refusing(True))
        if drop_open:
            self._call(self._drop_open())

    def restore(self) -> None:
        self._call(self._set_cut(False))
        self._call(self._set_refusing(False))

    def __enter__(self) -> FaultyTcpProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CONTROL_TIMEOUT_SECONDS)

    # --- the proxy, on its own loop ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            await self._drop_open()

    async def _set_refusing(self, refusing: bool) -> None:
        self._refusing = refusing

    async def _drop_open(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            client_writer.transport.abort()
            return
        if self._refusing:
            self.refused += 1
            await self._refuse_as_postgresql_does(client_reader, client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self.accepted += 1
        pair = (client_writer.transport, server_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))
        finally:
            for transport in pair:
                self._transports.discard(transport)
                transport.abort()

    async def _refuse_as_postgresql_does(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, struct.error):
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code not in _SSL_OR_GSS_REQUESTS:
                    await reader.readexactly(length - 8)  # the rest of the startup packet
                    break
                writer.write(b"N")  # no encryption: the client goes on in plain text
                await writer.drain()
            writer.write(_too_many_clients())
            await writer.drain()
        writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
