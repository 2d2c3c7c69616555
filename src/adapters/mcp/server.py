"""chatcore's own tools served as an MCP server over streamable HTTP, each call bound to the bearer token's user.

Choices:

* **The SDK's low-level ``Server``**, not ``MCPServer``: the tools come from a ToolRegistry at run
  time with ready-made JSON schemas, which ``MCPServer`` would rebuild from Python signatures.
* **Stateless HTTP with JSON responses** (``stateless=True, json_response=True``): no MCP session
  lives on the server between requests, so any replica can answer any request and a restart loses
  nothing; clients speaking the 2026-07-28 protocol send self-contained requests anyway. The cost is
  no server-to-client requests and no streamed progress, which these tools do not use.
* **Bearer authentication in front of the SDK**, as a small ASGI wrapper around the MCP endpoint: every
  HTTP request must carry ``Authorization: Bearer <jwt>``, checked by chatcore's TokenVerifier (401 with
  ``WWW-Authenticate: Bearer`` when missing or invalid, 503 when it cannot be checked). The verified
  Principal travels to the tool handler in the request's ASGI state, and every call runs as
  ``tools.call(principal, ...)``: no tool has a user argument, so one user cannot reach another's tasks.
  The SDK's own OAuth resource-server machinery is not used because it cannot answer 503 for a key
  server outage and expects an OAuth ``AccessToken`` model rather than chatcore's Principal.
* **DNS-rebinding protection off by default**: it defends servers that trust the network a browser sits
  on; this one trusts only a bearer token, which a rebinding page does not have. Pass ``allowed_hosts``
  to turn the SDK's Host/Origin checks on anyway (requests from browser origins are then refused).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams, TextContent, Tool
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chatcore.errors import AuthUnavailable, ChatError, ToolError, Unauthenticated
from chatcore.model import MAX_USER_ID_LENGTH, JsonValue, Principal
from chatcore.ports import TokenVerifier, ToolRegistry

logger = logging.getLogger("chatcore.mcp.server")

PRINCIPAL_STATE_KEY: Final = "chatcore_principal"
"""Where the verified Principal sits in the request's ASGI ``state`` (``request.state.chatcore_principal``)."""
DEFAULT_PATH: Final = "/mcp"
DEFAULT_SERVER_NAME: Final = "chatcore"


def create_mcp_asgi_app(
    tools: ToolRegistry,
    verifier: TokenVerifier,
    *,
    path: str = DEFAULT_PATH,
    server_name: str = DEFAULT_SERVER_NAME,
    allowed_hosts: Sequence[str] | None = None,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Starlette:
    """A Starlette app serving ``tools`` at ``path`` as a stateless streamable-HTTP MCP server.

    Serve it as its own ASGI app (e.g. with ``run_mcp_server``): its lifespan starts the SDK's
    request manager, then awaits ``on_shutdown`` hooks (close the database engine there) on exit.
    """
    if not path.startswith("/"):
        raise ValueError("path must start with '/'")
    manager = StreamableHTTPSessionManager(
        app=_mcp_server(tools, server_name),
        json_response=True,
        stateless=True,
        security_settings=TransportSecuritySettings(
            enable_dns_rebinding_protection=bool(allowed_hosts),
            allowed_hosts=list(allowed_hosts or ()),
            allowed_origins=[],
        ),
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            async with manager.run():
                yield
        finally:
            for hook in on_shutdown:
                await hook()

    endpoint = BearerAuthMiddleware(StreamableHTTPASGIApp(manager), verifier)
    return Starlette(routes=[Route(path, endpoint=endpoint)], lifespan=lifespan)


def run_mcp_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 8001, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (what ``chatcore mcp-serve`` runs)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on", proxy_headers=True)


def _mcp_server(tools: ToolRegistry, name: str) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None) -> ListToolsResult:
        specs = await tools.list_tools()
        return ListToolsResult(
            tools=[Tool(name=s.name, description=s.description, input_schema=dict(s.parameters)) for s in specs]
        )

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams) -> CallToolResult:
        principal = _principal(ctx.request)
        if principal is None:
            # Unreachable behind BearerAuthMiddleware; refuse rather than run a tool for nobody.
            return _error_result("Not authenticated")
        try:
            result = await tools.call(principal, params.name, params.arguments or {})
        except ToolError as error:
            return _error_result(error.detail)
        except ChatError as error:
            logger.warning("tool %s failed: %s", params.name, error.detail)
            return _error_result(error.detail)
        except Exception:
            logger.exception("tool %s raised", params.name, extra={"event": "tool_error", "tool": params.name})
            return _error_result(f"tool {params.name} failed unexpectedly")
        return _success_result(result)

    return Server(
        name,
        # None means "no Mcp-Param-* headers to validate": chatcore's schemas never declare any, and it
        # spares the SDK a tools/list round through the registry before every call.
        get_tool_input_schema=lambda _name: None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _principal(request: object) -> Principal | None:
    if not isinstance(request, Request):
        return None
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


def _success_result(result: JsonValue) -> CallToolResult:
    """The JSON as text for every client; objects also as structured content (older protocols allow only objects)."""
    text = json.dumps(result, ensure_ascii=False, default=str)
    structured = json.loads(text) if isinstance(result, dict) else None
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _error_result(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


class BearerAuthMiddleware:
    """ASGI middleware: verify the bearer token of every HTTP request, pass its Principal on in ``state``.

    Missing or invalid token: 401 with ``WWW-Authenticate: Bearer`` (RFC 6750). Verifier unavailable: 503.
    """

    def __init__(self, app: ASGIApp, verifier: TokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await _unauthorized(Unauthenticated().detail, invalid_token=False)(scope, receive, send)
            return
        try:
            principal = await self.verifier.verify(token)
        except Unauthenticated as error:
            await _unauthorized(error.detail, invalid_token=True)(scope, receive, send)
            return
        except AuthUnavailable as error:
            response = JSONResponse(
                {"error": "temporarily_unavailable", "error_description": error.detail},
                status_code=503,
                headers={"Retry-After": str(error.retry_after)},
            )
            await response(scope, receive, send)
            return
        if not principal.user_id or len(principal.user_id) > MAX_USER_ID_LENGTH:
            await _unauthorized("Token subject is not a valid user id", invalid_token=True)(scope, receive, send)
            return
        state = {**scope.get("state", {}), PRINCIPAL_STATE_KEY: principal}
        await self.app({**scope, "state": state}, receive, send)


def _unauthorized(detail: str, *, invalid_token: bool) -> JSONResponse:
    """RFC 6750 §3: no error code when no credentials were sent, ``invalid_token`` when they were refused."""
    if not invalid_token:
        return JSONResponse({"error": "unauthorized", "error_description": detail}, 401, {"WWW-Authenticate": "Bearer"})
    quoted = detail.encode("ascii", "replace").decode().replace('"', "'")
    challenge = f'Bearer error="invalid_token", error_description="{quoted}"'
    return JSONResponse({"error": "invalid_token", "error_description": detail}, 401, {"WWW-Authenticate": challenge})
