"""The todo tools served over MCP: a real uvicorn server driven by the SDK's streamable-HTTP client."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from chatcore.adapters.auth.hs256 import Hs256TokenVerifier, mint_hs256_token
from chatcore.adapters.mcp.registry import McpServerConfig, McpToolRegistry
from chatcore.adapters.mcp.server import create_mcp_asgi_app
from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.tools import todo_tools
from chatcore.errors import AuthUnavailable, ToolError
from chatcore.model import Principal
from chatcore.ports import TokenVerifier

SECRET = "mcp-serve-test-secret-0123456789abcdef"
OTHER_SECRET = "another-secret-that-is-long-enough-0123"
TODO_TOOLS = {"add_task", "list_tasks", "complete_task", "delete_task", "update_task"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

ClientFor = Callable[[str], AbstractAsyncContextManager[Client]]


def token(user_id: str, secret: str = SECRET) -> str:
    return mint_hs256_token(secret, user_id=user_id, ttl_seconds=600)


def with_auth(authorization: str) -> dict[str, str]:
    return {**MCP_HEADERS, "Authorization": authorization}


@asynccontextmanager
async def serving(verifier: TokenVerifier) -> AsyncIterator[str]:
    """The MCP app on a free port in this event loop; yields its URL."""
    app = create_mcp_asgi_app(todo_tools(InMemoryTaskStore()), verifier)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):  # generous: the app's startup shares a loaded 2-core machine
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serving(Hs256TokenVerifier(SECRET)) as served:
        yield served


@pytest.fixture(params=["auto", "legacy"])
def client_for(request: pytest.FixtureRequest, url: str) -> ClientFor:
    """Open an SDK client as a user: ``auto`` speaks the 2026-07-28 protocol, ``legacy`` the initialize handshake."""
    mode: str = request.param

    @asynccontextmanager
    async def open_client(user_id: str) -> AsyncIterator[Client]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token(user_id)}"}) as http,
            Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client,
        ):
            yield client

    return open_client


def result_json(result: CallToolResult) -> Any:
    [block] = result.content
    assert isinstance(block, TextContent)
    return json.loads(block.text) if not result.is_error else block.text


async def test_lists_the_todo_tools_with_no_user_parameter(client_for: ClientFor) -> None:
    async with client_for("alice") as client:
        tools = (await client.list_tools()).tools

    assert {tool.name for tool in tools} == TODO_TOOLS
    for tool in tools:
        assert tool.input_schema["type"] == "object"
        assert not [name for name in tool.input_schema["properties"] if "user" in name.lower()], tool.name
    add_task = next(tool for tool in tools if tool.name == "add_task")
    assert add_task.input_schema["required"] == ["title"]


async def test_each_user_reaches_only_their_own_tasks(client_for: ClientFor) -> None:
    async with client_for("alice") as alice, client_for("bob") as bob:
        created = await alice.call_tool("add_task", {"title": "Buy milk"})
        assert not created.is_error
        assert created.structured_content == {"task_id": 1, "status": "created", "title": "Buy milk"}
        assert [task["title"] for task in result_json(await alice.call_tool("list_tasks", {}))] == ["Buy milk"]

        assert result_json(await bob.call_tool("list_tasks", {})) == []
        refused = await bob.call_tool("complete_task", {"task_id": 1})
        assert refused.is_error
        assert "Task 1 not found" in result_json(refused)

        [task] = result_json(await alice.call_tool("list_tasks", {}))
        assert task["completed"] is False
        done = await alice.call_tool("complete_task", {"task_id": 1})
        assert done.structured_content == {"task_id": 1, "status": "completed", "title": "Buy milk"}


async def test_bad_arguments_are_an_error_result(client_for: ClientFor) -> None:
    async with client_for("alice") as alice:
        result = await alice.call_tool("add_task", {"title": ""})

    assert result.is_error
    assert "Invalid arguments for add_task" in result_json(result)


async def test_requests_without_a_valid_token_are_refused(url: str) -> None:
    async with httpx.AsyncClient() as http:
        missing = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        forged = await http.post(url, json=INITIALIZE, headers=with_auth(f"Bearer {token('alice', OTHER_SECRET)}"))
        basic = await http.post(url, json=INITIALIZE, headers=with_auth("Basic YWxpY2U6eA=="))
        accepted = await http.post(url, json=INITIALIZE, headers=with_auth(f"Bearer {token('alice')}"))

    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert forged.status_code == 401
    assert forged.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert basic.status_code == 401
    assert accepted.status_code == 200
    assert accepted.json()["result"]["serverInfo"]["name"] == "chatcore"


async def test_the_sdk_client_cannot_connect_with_a_forged_token(url: str) -> None:
    forged = token("alice", OTHER_SECRET)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {forged}"}) as http:
        with pytest.raises(ExceptionGroup) as refused:
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                await client.list_tools()
    assert refused.group_contains(MCPError, match="error response")


class UnreachableVerifier:
    async def verify(self, token: str) -> Principal:
        raise AuthUnavailable(retry_after=7)


async def test_a_verifier_outage_is_503_not_401() -> None:
    async with serving(UnreachableVerifier()) as served, httpx.AsyncClient() as http:
        response = await http.post(served, json=INITIALIZE, headers=with_auth("Bearer x.y.z"))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"


async def test_mounted_by_chatcores_own_mcp_registry_with_a_token_header(url: str) -> None:
    """Both directions together: the registry sends the configured header, the server binds calls to its user."""
    carol = McpServerConfig(name="todo", url=url, headers={"Authorization": f"Bearer {token('carol')}"})
    forged_token = token("carol", OTHER_SECRET)
    forged = McpServerConfig(name="forged", url=url, headers={"Authorization": f"Bearer {forged_token}"})
    nobody = Principal(user_id="ignored")  # third-party servers never see the caller

    async with McpToolRegistry([carol]) as registry:
        assert {spec.name for spec in await registry.list_tools()} == TODO_TOOLS
        created = await registry.call(nobody, "add_task", {"title": "Water plants"})
        assert created == {"task_id": 1, "status": "created", "title": "Water plants"}
        assert [task["title"] for task in await registry.call(nobody, "list_tasks", {})] == ["Water plants"]
        with pytest.raises(ToolError, match="Task 99 not found"):
            await registry.call(nobody, "complete_task", {"task_id": 99})

    async with McpToolRegistry([forged]) as registry:
        assert await registry.list_tools() == []
