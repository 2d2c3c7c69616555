"""Every endpoint that reads a JSON body answers 400 with a clear detail for a body nested too deeply, at any depth.

A 4 KB body of 2,000 nested arrays used to make the chat endpoint answer 500 (``RecursionError`` in the
framework's decoder). The endpoints are found in the app itself (every route handler taking a ``data``
body), so a route added later is covered without being listed here; ``BODY_READERS`` lists the ones that
must be among them, and routes that read the body themselves.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from chatcore.entrypoints.http.json_bodies import MAX_JSON_DEPTH, TOO_DEEP, nesting_depth
from chatcore.fakes import ScriptedAgent
from chatcore.model import AgentResponse

from .conftest import AppClient, auth

pytestmark = pytest.mark.integration

BODY_LIMIT = 1_048_576
"""The apps here take bodies up to 1 MB, so 100,000 nested objects (600 KB) are within the size limit."""
DEPTHS = (200, 2_000, 100_000)
BODY_READERS = {
    ("POST", "/api/{user_id:str}/chat"),
    ("PATCH", "/api/{user_id:str}/conversations/{conversation_id:uuid}"),
    ("POST", "/api/{user_id:str}/conversations/{conversation_id:uuid}/approvals"),
    ("POST", "/api/{user_id:str}/ai-sdk/chat"),
    ("POST", "/api/{user_id:str}/ag-ui"),
}
"""The routes that read a JSON body; each must answer 400 to a body nested too deeply."""
WRITE_METHODS = {"POST", "PUT", "PATCH"}


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def bodies(depth: int) -> dict[str, bytes]:
    return {
        "message as nested arrays": b'{"message": ' + deep_array(depth) + b"}",
        "nested arrays at the top": deep_array(depth),
        "nested objects under a key": b'{"message": "hi", "extra": ' + deep_object(depth) + b"}",
    }


def routes(app: Litestar) -> list[tuple[str, str, HTTPRouteHandler]]:
    found: list[tuple[str, str, HTTPRouteHandler]] = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in sorted(handler.http_methods & WRITE_METHODS):
                    found.append((method, route.path, handler))
    return found


def body_routes(app: Litestar) -> set[tuple[str, str]]:
    """Every (method, path) whose handler takes a decoded body, plus those known to read one themselves."""
    taking_data = {(m, p) for m, p, handler in routes(app) if "data" in handler.parsed_fn_signature.parameters}
    return taking_data | BODY_READERS


def concrete(path: str, user: str) -> str:
    """A path template with its parameters filled in: the user, fresh UUIDs, and a plain word for the rest."""
    parts = []
    for part in path.split("/"):
        if part.startswith("{"):
            name, _, kind = part.strip("{}").partition(":")
            part = user if name == "user_id" else str(uuid.uuid4()) if kind == "uuid" else "x"
        parts.append(part)
    return "/".join(parts)


def test_the_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"a": "[[[{{{", "b": [[1], [2, {"c": "\\"]"}]]}') == 4
    assert nesting_depth(b"[]") == 1
    assert nesting_depth(b'"just a string"') == 0
    assert nesting_depth(deep_object(100_000)) == 100_000


async def test_every_json_endpoint_answers_400_to_bodies_nested_at_any_depth(app_client: AppClient) -> None:
    user = f"deep-{uuid.uuid4().hex[:8]}"
    async with app_client(ScriptedAgent([AgentResponse("ok")]), max_body_bytes=BODY_LIMIT) as client:
        app: Litestar = client.app
        endpoints = sorted(body_routes(app))
        assert {(m, p) for m, p, _ in routes(app)} >= BODY_READERS, "every listed body reader is a route of the app"
        for method, path in endpoints:
            for accept in ("application/json", "text/event-stream"):
                for depth in DEPTHS:
                    for shape, body in bodies(depth).items():
                        assert len(body) <= BODY_LIMIT
                        response = await client.request(
                            method,
                            concrete(path, user),
                            content=body,
                            headers={**auth(user), "Content-Type": "application/json", "Accept": accept},
                        )
                        where = f"{method} {path} ({accept}), {shape}, {depth} levels"
                        assert response.status_code == 400, f"{where}: {response.status_code} {response.text[:200]}"
                        assert response.json() == {"status_code": 400, "detail": TOO_DEEP}, where


async def test_a_write_endpoint_never_answers_a_deep_body_with_a_server_error(app_client: AppClient) -> None:
    """Routes that take no body (stop) must not fail on one either."""
    user = f"deep-{uuid.uuid4().hex[:8]}"
    async with app_client(ScriptedAgent([AgentResponse("ok")]), max_body_bytes=BODY_LIMIT) as client:
        for method, path, _ in routes(client.app):
            for body in bodies(2_000).values():
                response = await client.request(
                    method,
                    concrete(path, user),
                    content=body,
                    headers={**auth(user), "Content-Type": "application/json"},
                )
                assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text[:200]}"


async def test_the_attack_from_the_issue_is_400_at_the_default_body_limit(app_client: AppClient) -> None:
    user = f"deep-{uuid.uuid4().hex[:8]}"
    body = b'{"message": ' + deep_array(2_000) + b"}"
    assert len(body) < 4_100
    async with app_client(ScriptedAgent([AgentResponse("ok")])) as client:
        response = await client.post(
            f"/api/{user}/chat", content=body, headers={**auth(user), "Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["detail"] == TOO_DEEP


async def test_a_body_nested_up_to_the_limit_is_decoded_as_usual(app_client: AppClient) -> None:
    user = f"deep-{uuid.uuid4().hex[:8]}"
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):  # the body's own object is one level
        nested = [nested]
    async with app_client(ScriptedAgent([AgentResponse("ok")])) as client:
        within = await client.post(
            f"/api/{user}/chat", content=json.dumps({"message": "hi", "extra": nested}), headers=auth(user)
        )
        beyond = await client.post(
            f"/api/{user}/chat", content=json.dumps({"message": "hi", "extra": [nested]}), headers=auth(user)
        )
    assert within.status_code == 200, within.text
    assert within.json()["response"] == "ok"
    assert beyond.status_code == 400
    assert beyond.json()["detail"] == TOO_DEEP
