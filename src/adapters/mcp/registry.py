"""McpToolRegistry: the tools of third-party MCP servers, mounted as one ToolRegistry.

Design choices, each for a reason:

* **One kept session per server**, opened on first use and reopened after a failure, closed by
  ``aclose()``. A stdio server is a process; starting one per call would add a process start-up
  (hundreds of milliseconds) to every tool call. Over streamable HTTP the SDK speaks the stateless
  2026-07-28 protocol when the server does, so a kept session is just a warm connection pool and
  nothing breaks when the server restarts or sits behind several replicas.
* **The SDK's ``Client`` is entered and exited by a background task per server**, because anyio
  requires a task group to be left by the task that entered it, and requests arrive on whatever
  task serves the chat turn. Requests from any task share the session (JSON-RPC multiplexes them).
* **Tool names are exposed as the servers give them**, so the model sees ``get_weather``, not
  ``weather__get_weather``. When two servers offer the same name, the server configured first
  keeps it and the other's tool is left out with a warning (once): ``chatcore.tools.ToolRouter``, the
  rule CompositeToolRegistry follows too when an MCP tool collides with chatcore's own, because a
  server that adds a tool while the app runs must not fail every turn. A name providers would reject (outside
  ``[A-Za-z0-9_-]{1,64}``) is skipped with a warning for the same reason.
* **A server that is down or too slow is left out**: its tools are not listed and a call to one of
  them is a ToolError saying the server is unavailable; the other servers' tools and the turn go on.
  After a failure the server is not retried for ``retry_unavailable_seconds``, so an outage costs
  one connect timeout, not one per turn.
* **Calls are never retried** (a tool may have side effects, so at most once); listings are retried
  once on a fresh connection when the kept one turns out to be closed.
* **The principal is not forwarded.** Mounted MCP servers are tools of the deployment (weather,
  search, a company wiki), configured by the operator and shared by every user; they get no
  user identity and no user token. Per-user data belongs in chatcore's own registries, which the
  service binds to the caller's principal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, NoReturn

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation, PaginatedRequestParams, TextContent, Tool

from chatcore.adapters.mcp.config import McpServerConfig, parse_mcp_servers
from chatcore.errors import ToolError
from chatcore.model import JsonValue, Principal, ToolSpec
from chatcore.tools import PROVIDER_TOOL_NAME, ToolOffer, ToolRouter

__all__ = ["McpServerConfig", "McpToolRegistry", "parse_mcp_servers"]

logger = logging.getLogger("chatcore.mcp")
"""Tool names OpenAI and Anthropic both accept."""
SSE_READ_TIMEOUT_SECONDS: Final = 300.0
"""The SDK's default for a server holding a response stream open."""
MAX_LIST_PAGES: Final = 100
"""A paginating server that never stops cannot hang a turn."""


class _Unavailable(Exception):
    """A server could not be reached, or did not answer in time. Internal: callers see a ToolError."""


def _client_info() -> Implementation:
    try:
        return Implementation(name="chatcore", version=version("chatcore"))
    except PackageNotFoundError:
        return Implementation(name="chatcore", version="0")


class _Connection:
    """One server's SDK Client, entered and left by a background task that owns it."""

    def __init__(self, config: McpServerConfig, *, connect_timeout: float) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self._client: Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def client(self) -> Client:
        """The open client, connecting first when there is none. Raises _Unavailable."""
        async with self._lock:
            if self._client is not None and self._owner is not None and not self._owner.done():
                return self._client
            self._drop()
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            owner = asyncio.create_task(self._own(ready, stop), name=f"mcp-server-{self.config.name}")
            try:
                waiting: set[asyncio.Future[Any]] = {ready, owner}
                await asyncio.wait(waiting, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                self._retire(owner, stop, cancel=not ready.done())
                raise
            if ready.done():
                self._client, self._owner, self._stop = ready.result(), owner, stop
                return self._client
            if owner.done():
                error = None if owner.cancelled() else owner.exception()
                raise _Unavailable(f"could not connect: {_describe(error)}") from error
            self._retire(owner, stop, cancel=True)
            raise _Unavailable(f"no answer within {self.connect_timeout:g}s while connecting")

    async def _own(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            if self.config.command is not None:
                command = list(self.config.command)
                params = StdioServerParameters(command=command[0], args=command[1:], env=dict(self.config.env))
                client = Client(stdio_client(params), cache=None, client_info=_client_info())
            else:
                assert self.config.url is not None
                # The SDK's way to send headers: pass an httpx2 client. Reads may wait long on an SSE
                # stream; each request is bounded by the registry's own timeouts instead.
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=dict(self.config.headers),
                        timeout=httpx2.Timeout(self.connect_timeout, read=SSE_READ_TIMEOUT_SECONDS),
                    )
                )
                transport = streamable_http_client(self.config.url, http_client=http)
                client = Client(transport, cache=None, client_info=_client_info())
            await stack.enter_async_context(client)
            ready.set_result(client)
            await stop.wait()

    def discard(self, client: Client) -> None:
        """Forget ``client`` after it failed, so the next use reconnects; a newer client is left alone."""
        if client is self._client:
            self._drop()

    def _drop(self) -> None:
        if self._owner is not None and self._stop is not None:
            self._retire(self._owner, self._stop, cancel=False)
        self._client = self._owner = self._stop = None

    def _retire(self, owner: asyncio.Task[None], stop: asyncio.Event, *, cancel: bool) -> None:
        """Let the owner close its client in the background: a turn never waits for a server's shutdown.

        A connected owner is stopped gracefully; one still connecting (``cancel``) is cancelled.
        """
        stop.set()
        if cancel:
            owner.cancel()
        self._closing.add(owner)
        owner.add_done_callback(self._reaped)

    def _reaped(self, owner: asyncio.Task[None]) -> None:
        self._closing.discard(owner)
        if not owner.cancelled() and (error := owner.exception()) is not None:
            logger.debug("MCP server %r closed with an error: %s", self.config.name, _describe(error))

    async def aclose(self) -> None:
        async with self._lock:
            self._drop()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


@dataclass(eq=False)
class _Server:
    config: McpServerConfig
    connection: _Connection
    tools: tuple[ToolSpec, ...] = ()
    listed_at: float | None = None
    down_until: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def is_down(self, now: float) -> bool:
        return self.down_until is not None and now < self.down_until


class McpToolRegistry:
    """A ToolRegistry over MCP servers reached by stdio or streamable HTTP (see the module docstring).

    Tool lists are cached for ``list_ttl_seconds``. Connecting and listing a server must finish within
    ``connect_timeout_seconds`` and a call within ``call_timeout_seconds``, or the server is treated
    as unavailable (listing) or the call fails with a ToolError (calling). Call ``aclose()`` (or use
    ``async with``) on shutdown to stop stdio server processes; the registry reconnects if used again.
    Use it from one event loop.
    """

    def __init__(
        self,
        servers: Sequence[McpServerConfig],
        *,
        call_timeout_seconds: float = 30.0,
        list_ttl_seconds: float = 300.0,
        connect_timeout_seconds: float = 10.0,
        retry_unavailable_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [server.name for server in servers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"MCP server names must be unique; repeated: {', '.join(duplicates)}")
        for label, seconds in (
            ("call_timeout_seconds", call_timeout_seconds),
            ("connect_timeout_seconds", connect_timeout_seconds),
        ):
            if not seconds > 0:
                raise ValueError(f"{label} must be positive")
        for label, seconds in (
            ("list_ttl_seconds", list_ttl_seconds),
            ("retry_unavailable_seconds", retry_unavailable_seconds),
        ):
            if not seconds >= 0:
                raise ValueError(f"{label} must not be negative")
        self.call_timeout_seconds = call_timeout_seconds
        self.list_ttl_seconds = list_ttl_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.retry_unavailable_seconds = retry_unavailable_seconds
        self._clock = clock
        self._servers = [
            _Server(server, _Connection(server, connect_timeout=connect_timeout_seconds)) for server in servers
        ]
        self._router: ToolRouter[_Server] = ToolRouter("MCP servers")

    def __repr__(self) -> str:
        return f"McpToolRegistry(servers={[s.config.name for s in self._servers]!r})"

    async def __aenter__(self) -> McpToolRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every session (stopping stdio server processes)."""
        await asyncio.gather(*(server.connection.aclose() for server in self._servers))

    async def list_tools(self) -> list[ToolSpec]:
        """The tools of every available server, refreshed when older than the TTL. Servers are asked concurrently."""
        await asyncio.gather(*(self._refresh(server) for server in self._servers))
        now = self._clock()
        offers = [ToolOffer(server, repr(server.config.name), server.tools) for server in self._servers]
        # A down server's tools are not listed, but a call to one says the server is unavailable.
        return self._router.route(
            (offer for offer in offers if not offer.owner.is_down(now)),
            unlisted=(offer for offer in offers if offer.owner.is_down(now)),
        )

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        """Forward the call to the server that offers ``name``; ``principal`` is deliberately not sent."""
        server = await self._router.owner_of(name, self.list_tools)
        if not isinstance(arguments, Mapping):
            raise ToolError(f"Arguments for {name} must be a JSON object.")
        unavailable = f"MCP server {server.config.name!r} is unavailable; tool {name!r} cannot be used right now."
        if server.is_down(self._clock()):
            raise ToolError(unavailable)
        try:
            client = await server.connection.client()
        except _Unavailable as error:
            self._mark_down(server, str(error))
            raise ToolError(unavailable) from error
        try:
            async with asyncio.timeout(self.call_timeout_seconds):
                result = await client.call_tool(name, dict(arguments))
        except TimeoutError:
            raise ToolError(
                f"MCP tool {name!r} on server {server.config.name!r} timed out after {self.call_timeout_seconds:g}s."
            ) from None
        except Exception as error:
            if _connection_lost(error):
                self._lost(server, client, error)
                raise ToolError(unavailable) from error
            if isinstance(error, MCPError):
                raise ToolError(f"MCP server {server.config.name!r} refused {name!r}: {error.message}") from error
            logger.warning("MCP server %r gave an unusable answer to %r", server.config.name, name, exc_info=True)
            raise ToolError(f"MCP server {server.config.name!r} gave an unusable answer to {name!r}.") from error
        return tool_result_json(result)

    async def _refresh(self, server: _Server) -> None:
        async with server.lock:
            now = self._clock()
            if server.is_down(now):
                return
            if server.listed_at is not None and now - server.listed_at < self.list_ttl_seconds:
                return
            try:
                server.tools = await self._fetch_tools(server)
            except _Unavailable as error:
                self._mark_down(server, str(error))
                return
            if server.down_until is not None:
                logger.info("MCP server %r is available again", server.config.name)
            server.listed_at, server.down_until = self._clock(), None

    async def _fetch_tools(self, server: _Server) -> tuple[ToolSpec, ...]:
        """The server's tools, over the kept session or, if that one turns out closed, over one fresh session."""
        for attempt in (1, 2):
            client = await server.connection.client()
            try:
                async with asyncio.timeout(self.connect_timeout_seconds):
                    tools = await _list_all(client)
            except TimeoutError:
                server.connection.discard(client)
                raise _Unavailable(f"no tool list within {self.connect_timeout_seconds:g}s") from None
            except Exception as error:
                server.connection.discard(client)
                if attempt == 1 and _connection_lost(error):
                    continue
                raise _Unavailable(f"listing tools failed: {_describe(error)}") from error
            return tuple(spec for tool in tools if (spec := _tool_spec(server.config.name, tool)) is not None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _mark_down(self, server: _Server, reason: str) -> None:
        server.down_until = self._clock() + self.retry_unavailable_seconds
        server.listed_at = None
        logger.warning(
            "MCP server %r is unavailable (%s); its tools are left out for %gs",
            server.config.name,
            reason,
            self.retry_unavailable_seconds,
            extra={"event": "mcp_server_unavailable", "mcp_server": server.config.name},
        )

    def _lost(self, server: _Server, client: Client, error: BaseException) -> None:
        """The session died mid-call: reconnect on next use, and re-list so a dead server's tools drop out."""
        server.connection.discard(client)
        server.listed_at = None
        logger.warning("MCP server %r dropped the connection: %s", server.config.name, _describe(error))


async def _list_all(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _tool_spec(server: str, tool: Tool) -> ToolSpec | None:
    if not PROVIDER_TOOL_NAME.fullmatch(tool.name):
        logger.warning("MCP server %r offers tool %r, a name model providers refuse; it is left out", server, tool.name)
        return None
    return ToolSpec(name=tool.name, description=tool.description or tool.title or "", parameters=tool.input_schema)


def tool_result_json(result: CallToolResult) -> JsonValue:
    """An MCP tool result as JSON: structured content, else its text (as JSON when it parses), else its items.

    Raises ToolError with the tool's text when the result is an error (``isError``).
    """
    if result.is_error:
        raise ToolError(_text(result) or "The MCP tool reported an error without a message.")
    if result.structured_content is not None:
        return result.structured_content
    if not result.content:
        return None
    if all(isinstance(block, TextContent) for block in result.content):
        text = _text(result)
        try:
            return json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            return text
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def _refuse_constant(constant: str) -> NoReturn:
    """NaN and Infinity parse in Python but are not JSON; such text stays text."""
    raise ValueError(constant)


def _connection_lost(error: BaseException) -> bool:
    if isinstance(error, MCPError):
        return error.code == CONNECTION_CLOSED
    return isinstance(error, anyio.ClosedResourceError | anyio.BrokenResourceError | OSError | httpx2.TransportError)


def _describe(error: BaseException | None) -> str:
    """One line for a log: the innermost cause of an exception group (what the transport actually hit)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if error is None:
        return "unknown error"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
