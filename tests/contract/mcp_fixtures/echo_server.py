"""A tiny MCP server, built with the official SDK, that the MCP registry's contract tests run as a process.

    python echo_server.py stdio [--prefix P]
    python echo_server.py http --port N [--prefix P]

``--prefix`` renames every tool (``P`` + name) so that two instances can be mounted side by side.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent


def build_server(prefix: str) -> MCPServer:
    server: MCPServer = MCPServer(f"{prefix}echo-fixture", log_level="ERROR")

    @server.tool(name=f"{prefix}echo", description="Echo the text back.", structured_output=False)
    def echo(text: str) -> str:
        return text

    @server.tool(name=f"{prefix}fail", description="Always fails with an error result.")
    def fail() -> str:
        raise ToolError("the fixture tool failed on purpose")

    @server.tool(name=f"{prefix}slow", description="Sleep, then answer.", structured_output=False)
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finally"

    @server.tool(name=f"{prefix}add", description="Add two integers; structured output.")
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @server.tool(name=f"{prefix}json_text", description="Answer JSON as text.", structured_output=False)
    def json_text() -> str:
        return '{"answer": 42, "items": [1, 2]}'

    @server.tool(name=f"{prefix}picture", description="Answer text and an image.", structured_output=False)
    def picture() -> list[Any]:
        return [
            TextContent(type="text", text="a red dot"),
            ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
        ]

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="")
    args = parser.parse_args()
    server = build_server(args.prefix)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
