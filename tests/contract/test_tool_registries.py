"""The ToolRegistry contract, run on every registry: function tools, the todo toolset on each task store, the
composite, and an MCP server's tools.

What any registry promises, whatever its tools: names a provider accepts, each once; an ``"object"`` schema
per tool with every reference resolvable; JSON results; a ToolError for an unknown tool or arguments that
are not an object. A new registry joins by adding one entry to ``REGISTRIES``. What the todo tools do is
``test_tool_registry.py``'s; the MCP transport's details are ``test_mcp_registry.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore import Principal, ToolError, ToolRegistry
from chatcore.adapters.mcp.registry import McpServerConfig, McpToolRegistry
from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.adapters.todo.tools import todo_tools
from chatcore.model import JsonValue
from chatcore.tools import PROVIDER_TOOL_NAME, CompositeToolRegistry, FunctionToolRegistry, tool

MCP_FIXTURE = Path(__file__).parent / "mcp_fixtures" / "echo_server.py"


@tool
async def echo(principal: Principal, text: str, times: int = 1) -> dict[str, JsonValue]:
    """Echo the text back to its sender."""
    return {"said": " ".join([text] * times), "to": principal.user_id}


@tool(requires_approval=True)
def forget(principal: Principal, what: Literal["everything", "nothing"]) -> str:
    """Forget something (asks first)."""
    return f"{principal.user_id} forgot {what}"


@dataclass(frozen=True)
class Probe:
    """One call every registry under test can answer, with what it answers for ``principal``."""

    tool: str
    arguments: dict[str, JsonValue]
    expected: Callable[[Principal], JsonValue]


@dataclass(frozen=True)
class Subject:
    registry: ToolRegistry
    probe: Probe


ECHO_PROBE = Probe("echo", {"text": "hi", "times": 2}, lambda principal: {"said": "hi hi", "to": principal.user_id})
TODO_PROBE = Probe("list_tasks", {"status": "all"}, lambda principal: [])
MCP_PROBE = Probe("echo", {"text": "hi"}, lambda principal: "hi")

Factory = Callable[[AsyncEngine | None], AbstractAsyncContextManager[Subject]]


@asynccontextmanager
async def function_tools(engine: AsyncEngine | None) -> AsyncIterator[Subject]:
    yield Subject(FunctionToolRegistry([echo, forget]), ECHO_PROBE)


@asynccontextmanager
async def todo_memory(engine: AsyncEngine | None) -> AsyncIterator[Subject]:
    yield Subject(todo_tools(InMemoryTaskStore()), TODO_PROBE)


@asynccontextmanager
async def todo_sql(engine: AsyncEngine | None) -> AsyncIterator[Subject]:
    assert engine is not None
    yield Subject(todo_tools(SqlAlchemyTaskStore(engine)), TODO_PROBE)


@asynccontextmanager
async def composite(engine: AsyncEngine | None) -> AsyncIterator[Subject]:
    registry = CompositeToolRegistry(todo_tools(InMemoryTaskStore()), FunctionToolRegistry([echo, forget]))
    yield Subject(registry, ECHO_PROBE)


@asynccontextmanager
async def mcp(engine: AsyncEngine | None) -> AsyncIterator[Subject]:
    server = McpServerConfig(name="fixture", command=[sys.executable, str(MCP_FIXTURE), "stdio"])
    async with McpToolRegistry([server]) as registry:
        yield Subject(registry, MCP_PROBE)


REGISTRIES: dict[str, Factory] = {
    "function": function_tools,
    "todo-memory": todo_memory,
    "todo-sqlite": todo_sql,
    "todo-postgres": todo_sql,
    "composite": composite,
    "mcp": mcp,
}


ENGINES = {"todo-sqlite": "sqlite_engine", "todo-postgres": "pg_engine"}


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.integration) if "postgres" in name else name for name in REGISTRIES]
)
def kind(request: pytest.FixtureRequest) -> tuple[str, AsyncEngine | None]:
    """Which registry, with the database engine it needs (the session's SQLite or PostgreSQL, else None)."""
    engine = request.getfixturevalue(ENGINES[request.param]) if request.param in ENGINES else None
    return request.param, engine


@pytest.fixture
async def subject(kind: tuple[str, AsyncEngine | None]) -> AsyncIterator[Subject]:
    name, engine = kind
    async with REGISTRIES[name](engine) as made:
        yield made


@pytest.fixture
def someone() -> Principal:
    """A user of their own per test, so that registries over a shared database start empty for them."""
    return Principal(f"user-{uuid.uuid4().hex}", email="someone@example.com")


def refs_in(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        own = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
        return own + [ref for value in schema.values() for ref in refs_in(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in refs_in(item)]
    return []


def resolves(ref: str, schema: Mapping[str, Any]) -> bool:
    if not ref.startswith("#/"):
        return False
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return isinstance(node, Mapping)


async def test_tools_have_provider_safe_unique_names_and_object_schemas(subject: Subject) -> None:
    specs = await subject.registry.list_tools()

    names = [spec.name for spec in specs]
    assert names, "every registry under test offers tools"
    assert len(names) == len(set(names))
    for spec in specs:
        assert PROVIDER_TOOL_NAME.fullmatch(spec.name), spec.name
        assert isinstance(spec.description, str)
        assert spec.description.strip(), spec.name
        assert isinstance(spec.requires_approval, bool)
        parameters = spec.parameters
        Draft202012Validator.check_schema(parameters)
        assert parameters["type"] == "object", spec.name
        properties = parameters.get("properties", {})
        assert isinstance(properties, Mapping)
        assert set(parameters.get("required", [])) <= set(properties), spec.name
        for ref in refs_in(parameters):
            assert resolves(ref, parameters), f"{spec.name}: {ref} points nowhere"
        assert not {name for name in properties if name.lower() in ("user", "user_id", "principal", "owner")}


async def test_listing_twice_gives_the_same_tools(subject: Subject) -> None:
    assert list(await subject.registry.list_tools()) == list(await subject.registry.list_tools())


async def test_a_call_gives_a_json_result(subject: Subject, someone: Principal) -> None:
    probe = subject.probe
    result = await subject.registry.call(someone, probe.tool, probe.arguments)

    assert result == probe.expected(someone)
    assert json.loads(json.dumps(result)) == result


async def test_a_call_works_before_any_listing_and_the_arguments_fit_the_listed_schema(
    subject: Subject, someone: Principal
) -> None:
    probe = subject.probe
    assert await subject.registry.call(someone, probe.tool, probe.arguments) == probe.expected(someone)

    [spec] = [spec for spec in await subject.registry.list_tools() if spec.name == probe.tool]
    assert Draft202012Validator(spec.parameters).is_valid(probe.arguments)


async def test_concurrent_calls_each_get_their_own_result(subject: Subject) -> None:
    principals = [Principal(f"user-{uuid.uuid4().hex}") for _ in range(8)]
    probe = subject.probe

    results = await asyncio.gather(*(subject.registry.call(p, probe.tool, probe.arguments) for p in principals))

    assert results == [probe.expected(p) for p in principals]


async def test_an_unknown_tool_is_a_tool_error_naming_it(subject: Subject, someone: Principal) -> None:
    with pytest.raises(ToolError, match="launch_rockets"):
        await subject.registry.call(someone, "launch_rockets", {})


async def test_arguments_that_are_not_an_object_are_a_tool_error(subject: Subject, someone: Principal) -> None:
    not_an_object = cast(Mapping[str, JsonValue], ["hi"])
    with pytest.raises(ToolError, match="object"):
        await subject.registry.call(someone, subject.probe.tool, not_an_object)
