"""McpToolRegistry against a real MCP server process (the SDK's own server), over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp_types import CallToolResult, ImageContent, TextContent

from chatcore.adapters.mcp.registry import McpServerConfig, McpToolRegistry, parse_mcp_servers, tool_result_json
from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.tools import todo_tools
from chatcore.errors import ToolError
from chatcore.fakes import FunctionAgent, InMemoryConversationStore, StaticTokenVerifier
from chatcore.model import AgentRequest, AgentResponse, Principal, Role, ToolCall
from chatcore.service import ChatService
from chatcore.tools import CompositeToolRegistry
from tests.stores import claims_of

FIXTURE = Path(__file__).parent / "mcp_fixtures" / "echo_server.py"
ALICE = Principal(user_id="alice", email="alice@example.com")
FIXTURE_TOOLS = {"echo", "fail", "slow", "add", "json_text", "picture"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


STARTUP_SECONDS = 60.0
"""How long a fixture server may take to start and answer (the registry's connect timeout, 10 s by default): a Python
process importing the MCP SDK takes tens of seconds on a loaded 2-core machine. Tests of a server that never answers
set their own short timeout."""
CALL_SECONDS = 5.0
"""The registry's call timeout in these tests: short, for the slow tool's test, yet long enough for ten concurrent
calls through one session on a loaded machine."""


def stdio_server(name: str, prefix: str = "") -> McpServerConfig:
    return McpServerConfig(name=name, command=[sys.executable, str(FIXTURE), "stdio", "--prefix", prefix])


class HttpFixtureServer:
    """The fixture server as a uvicorn process on a fixed port, so a test can kill and restart it."""

    def __init__(self, prefix: str, port: int | None = None) -> None:
        self.prefix = prefix
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(FIXTURE), "http", "--port", str(self.port), "--prefix", self.prefix
        )
        for _ in range(int(STARTUP_SECONDS / 0.05)):
            if self.process.returncode is not None:
                raise RuntimeError(f"fixture server exited with {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError("fixture server did not start listening")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture(scope="module")
async def http_server() -> AsyncIterator[HttpFixtureServer]:
    server = HttpFixtureServer(prefix="h_")
    await server.start()
    yield server
    await server.kill()


@pytest.fixture(scope="module")
async def stdio_registry() -> AsyncIterator[McpToolRegistry]:
    async with McpToolRegistry(
        [stdio_server("local")], call_timeout_seconds=CALL_SECONDS, connect_timeout_seconds=STARTUP_SECONDS
    ) as registry:
        yield registry


@pytest.fixture(scope="module")
async def http_registry(http_server: HttpFixtureServer) -> AsyncIterator[McpToolRegistry]:
    config = McpServerConfig(name="remote", url=http_server.url)
    async with McpToolRegistry(
        [config], call_timeout_seconds=CALL_SECONDS, connect_timeout_seconds=STARTUP_SECONDS
    ) as registry:
        yield registry


@pytest.fixture(params=["stdio", "http"])
def mounted(request: pytest.FixtureRequest) -> tuple[McpToolRegistry, str]:
    """The same server mounted either way, with the prefix its tool names carry."""
    if request.param == "stdio":
        return request.getfixturevalue("stdio_registry"), ""
    return request.getfixturevalue("http_registry"), "h_"


async def test_lists_the_servers_tools_with_their_schemas(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, prefix = mounted
    specs = {spec.name: spec for spec in await registry.list_tools()}

    assert set(specs) == {prefix + name for name in FIXTURE_TOOLS}
    echo = specs[prefix + "echo"]
    assert echo.description == "Echo the text back."
    assert echo.parameters["type"] == "object"
    assert echo.parameters["required"] == ["text"]


async def test_results_become_json(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, p = mounted

    assert await registry.call(ALICE, p + "echo", {"text": "hello"}) == "hello"
    assert await registry.call(ALICE, p + "add", {"a": 2, "b": 3}) == {"sum": 5}
    assert await registry.call(ALICE, p + "json_text", {}) == {"answer": 42, "items": [1, 2]}
    picture = await registry.call(ALICE, p + "picture", {})
    assert picture == [
        {"type": "text", "text": "a red dot"},
        {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
    ]


async def test_an_error_result_is_a_tool_error_with_its_text(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, p = mounted

    with pytest.raises(ToolError, match="failed on purpose"):
        await registry.call(ALICE, p + "fail", {})


async def test_a_slow_call_times_out_and_the_session_survives(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, p = mounted

    with pytest.raises(ToolError, match=f"timed out after {CALL_SECONDS:g}s"):
        await registry.call(ALICE, p + "slow", {"seconds": 60})
    assert await registry.call(ALICE, p + "echo", {"text": "still here"}) == "still here"


async def test_unknown_tools_and_bad_arguments_are_tool_errors(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, p = mounted

    with pytest.raises(ToolError, match="Unknown tool"):
        await registry.call(ALICE, "no_such_tool", {})
    with pytest.raises(ToolError):
        await registry.call(ALICE, p + "add", {"a": "not a number", "b": 1})


async def test_concurrent_calls_share_one_session(mounted: tuple[McpToolRegistry, str]) -> None:
    registry, p = mounted

    results = await asyncio.gather(*(registry.call(ALICE, p + "echo", {"text": f"message {i}"}) for i in range(10)))

    assert results == [f"message {i}" for i in range(10)]


async def test_servers_that_are_down_are_left_out_and_the_others_still_work() -> None:
    dead_http = McpServerConfig(name="dead-http", url=f"http://127.0.0.1:{free_port()}/mcp")
    exits = McpServerConfig(name="exits", command=[sys.executable, "-c", "pass"])
    missing = McpServerConfig(name="missing", command=["/nonexistent/mcp-server"])
    servers = [dead_http, exits, missing, stdio_server("up", prefix="up_")]

    async with McpToolRegistry(servers, connect_timeout_seconds=STARTUP_SECONDS) as registry:
        names = {spec.name for spec in await registry.list_tools()}

        assert names == {"up_" + name for name in FIXTURE_TOOLS}
        assert await registry.call(ALICE, "up_echo", {"text": "fine"}) == "fine"


async def test_a_server_that_does_not_answer_in_time_is_left_out() -> None:
    silent = McpServerConfig(name="silent", command=[sys.executable, "-c", "import sys; sys.stdin.read()"])

    async with McpToolRegistry([silent], connect_timeout_seconds=0.5) as registry:
        assert await registry.list_tools() == []
        with pytest.raises(ToolError, match="Unknown tool"):
            await registry.call(ALICE, "echo", {"text": "anyone?"})


async def test_a_server_that_goes_down_is_dropped_then_mounted_again_when_it_returns() -> None:
    server = HttpFixtureServer(prefix="g_")
    await server.start()
    now = [0.0]
    registry = McpToolRegistry(
        [McpServerConfig(name="gone", url=server.url), stdio_server("up", prefix="up_")],
        list_ttl_seconds=60,
        retry_unavailable_seconds=30,
        connect_timeout_seconds=STARTUP_SECONDS,
        clock=lambda: now[0],
    )
    try:
        assert "g_echo" in {spec.name for spec in await registry.list_tools()}
        await server.kill()

        # Within the TTL the list is served from the cache: the server is not asked.
        assert "g_echo" in {spec.name for spec in await registry.list_tools()}
        with pytest.raises(ToolError, match="MCP server 'gone' is unavailable"):
            await registry.call(ALICE, "g_echo", {"text": "anyone?"})

        # The failed call made the registry re-list; the dead server's tools drop out, the others stay.
        names = {spec.name for spec in await registry.list_tools()}
        assert "g_echo" not in names
        assert "up_echo" in names
        with pytest.raises(ToolError, match="MCP server 'gone' is unavailable"):
            await registry.call(ALICE, "g_echo", {"text": "anyone?"})

        await server.start()
        # Not retried before retry_unavailable_seconds have passed...
        assert "g_echo" not in {spec.name for spec in await registry.list_tools()}
        now[0] += 31
        # ...then reconnected.
        assert "g_echo" in {spec.name for spec in await registry.list_tools()}
        assert await registry.call(ALICE, "g_echo", {"text": "back"}) == "back"
    finally:
        await registry.aclose()
        await server.kill()


async def test_a_tool_offered_by_two_servers_goes_to_the_first_with_one_warning(
    http_server: HttpFixtureServer, caplog: pytest.LogCaptureFixture
) -> None:
    # "local" offers exactly the names "remote" offers: every one of its tools is shadowed, none fails the listing.
    servers = [McpServerConfig(name="remote", url=http_server.url), stdio_server("local", prefix="h_")]

    async with McpToolRegistry(servers, list_ttl_seconds=0, connect_timeout_seconds=STARTUP_SECONDS) as registry:
        first = [spec.name for spec in await registry.list_tools()]
        second = [spec.name for spec in await registry.list_tools()]

        assert sorted(first) == sorted(second) == sorted("h_" + name for name in FIXTURE_TOOLS)
        assert await registry.call(ALICE, "h_echo", {"text": "which one?"}) == "which one?"
        warnings = [r.getMessage() for r in caplog.records if "offered by both" in r.getMessage()]
        assert len(warnings) == len(FIXTURE_TOOLS)  # once per name, not once per listing
        assert "'h_echo' is offered by both MCP servers 'remote' and 'local'; the first is used" in "\n".join(warnings)


async def test_mounted_beside_the_todo_tools_in_a_composite(stdio_registry: McpToolRegistry) -> None:
    tasks = InMemoryTaskStore()
    composite = CompositeToolRegistry(todo_tools(tasks), stdio_registry)

    names = {spec.name for spec in await composite.list_tools()}

    assert {"add_task", "list_tasks", "echo", "add"} <= names
    assert await composite.call(ALICE, "echo", {"text": "via composite"}) == "via composite"
    created = await composite.call(ALICE, "add_task", {"title": "Buy milk"})
    assert created["status"] == "created"
    assert [task.title for task in await tasks.list("alice")] == ["Buy milk"]
    with pytest.raises(ToolError, match="Unknown tool"):
        await composite.call(ALICE, "no_such_tool", {})


async def test_a_chat_turn_uses_a_mounted_tool_and_its_result_reaches_the_reply(
    stdio_registry: McpToolRegistry,
) -> None:
    def agent(request: AgentRequest) -> AgentResponse:
        last = request.messages[-1]
        if last.role is Role.TOOL:
            return AgentResponse(text=f"The echo tool said {last.content}")
        assert "echo" in {tool.name for tool in request.tools}
        return AgentResponse(text="", tool_calls=(ToolCall(id="call-1", name="echo", arguments={"text": "pong"}),))

    conversations = InMemoryConversationStore()

    service = ChatService(
        store=conversations,
        claims=claims_of(conversations),
        agent=FunctionAgent(agent),
        verifier=StaticTokenVerifier(),
        tools=CompositeToolRegistry(todo_tools(InMemoryTaskStore()), stdio_registry),
    )

    reply = await service.send(ALICE, "Please echo pong")

    assert reply.response == 'The echo tool said "pong"'
    assert [(call.name, call.result, call.error) for call in reply.tool_calls] == [("echo", "pong", None)]


# --- configuration -------------------------------------------------------------------------------


def test_parses_the_setting() -> None:
    servers = parse_mcp_servers(
        '[{"name": "files", "command": ["python", "-m", "x"], "env": {"ROOT": "/srv"}},'
        ' {"name": "weather", "url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer s3cret"}}]'
    )

    assert servers == [
        McpServerConfig(name="files", command=("python", "-m", "x"), env={"ROOT": "/srv"}),
        McpServerConfig(name="weather", url="http://127.0.0.1:9000/mcp", headers={"Authorization": "Bearer s3cret"}),
    ]
    assert servers[0].transport == "stdio"
    assert servers[1].transport == "http"
    assert "s3cret" not in repr(servers[1])
    assert parse_mcp_servers("  ") == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "must be a JSON list"),
        ('{"name": "x"}', "must be a JSON list of server objects, not dict"),
        ('["x"]', "entry 1 must be a JSON object"),
        ('[{"command": ["x"]}]', "entry 1 needs a 'name'"),
        ('[{"name": "", "command": ["x"]}]', "must be 1-64 letters"),
        ('[{"name": "a b", "command": ["x"]}]', "must be 1-64 letters"),
        ('[{"name": "x"}]', "exactly one of 'command' \\(stdio\\) or 'url' \\(HTTP\\)"),
        ('[{"name": "x", "command": ["y"], "url": "http://h/mcp"}]', "exactly one of"),
        ('[{"name": "x", "command": []}]', "'command' must be a non-empty list of strings"),
        ('[{"name": "x", "command": "python -m x"}]', "'command' must be a non-empty list of strings"),
        ('[{"name": "x", "command": [1]}]', "'command' must be a non-empty list of strings"),
        ('[{"name": "x", "url": "ftp://h/mcp"}]', "'url' must be an http:// or https:// URL"),
        ('[{"name": "x", "url": "http:///mcp"}]', "'url' must be an http:// or https:// URL"),
        ('[{"name": "x", "url": "http://h/mcp", "env": {"A": "b"}}]', "'env' applies to 'command' servers only"),
        ('[{"name": "x", "command": ["y"], "headers": {"A": "b"}}]', "'headers' apply to 'url' servers only"),
        ('[{"name": "x", "command": ["y"], "env": {"A": 1}}]', "'env' must be an object of string values"),
        ('[{"name": "x", "command": ["y"], "cwd": "/"}]', "unknown key\\(s\\) 'cwd'"),
        ('[{"name": "x", "command": ["y"]}, {"name": "x", "url": "http://h/mcp"}]', "entry 2: the name 'x' is used"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mcp_servers(value)


def test_server_names_must_be_unique_in_a_registry() -> None:
    with pytest.raises(ValueError, match="unique; repeated: a"):
        McpToolRegistry([stdio_server("a"), stdio_server("a")])


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (CallToolResult(content=[], structured_content={"n": 1}), {"n": 1}),
        (CallToolResult(content=[]), None),
        (CallToolResult(content=[TextContent(type="text", text="NaN")]), "NaN"),
        (CallToolResult(content=[TextContent(type="text", text="a"), TextContent(type="text", text="b")]), "a\nb"),
        (CallToolResult(content=[TextContent(type="text", text="[1, 2]")]), [1, 2]),
        (
            CallToolResult(content=[ImageContent(type="image", data="AA==", mime_type="image/png")]),
            [{"type": "image", "data": "AA==", "mimeType": "image/png"}],
        ),
    ],
)
def test_tool_results_map_to_json(result: CallToolResult, expected: Any) -> None:
    assert tool_result_json(result) == expected


def test_an_error_result_without_text_still_explains_itself() -> None:
    with pytest.raises(ToolError, match="reported an error"):
        tool_result_json(CallToolResult(content=[], is_error=True))
