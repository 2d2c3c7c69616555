"""The todo toolset's contract, run against every ToolRegistry that serves it (the todo tools on each task store,
and mounted in a composite); what every ToolRegistry promises is ``test_tool_registries.py``'s.

Every test goes through the registry's public interface only, so a new adapter joins
the suite by adding one entry to ``FACTORIES``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore import Principal, ToolError, ToolRegistry, ToolSpec
from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.tables import metadata
from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.model import TaskNotFound
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.adapters.todo.tools import todo_tools
from chatcore.fakes import InMemoryToolRegistry
from chatcore.model import JsonValue
from chatcore.tools import CompositeToolRegistry
from tests.conftest import fresh_database

ALICE = Principal("alice", email="alice@example.com")
BOB = Principal("bob", email="bob@example.com")
TODO_TOOL_NAMES = ["add_task", "list_tasks", "complete_task", "delete_task", "update_task"]
TODO_TOOLS = set(TODO_TOOL_NAMES)
TASK_KEYS = {"id", "title", "description", "completed", "created_at"}

RegistryFactory = Callable[[Path], AbstractAsyncContextManager[ToolRegistry]]


@asynccontextmanager
async def todo_memory(tmp_path: Path) -> AsyncIterator[ToolRegistry]:
    yield todo_tools(InMemoryTaskStore())


@asynccontextmanager
async def todo_sqlite(tmp_path: Path) -> AsyncIterator[ToolRegistry]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        yield todo_tools(SqlAlchemyTaskStore(engine))
    finally:
        await engine.dispose()


@asynccontextmanager
async def composite(tmp_path: Path) -> AsyncIterator[ToolRegistry]:
    yield CompositeToolRegistry(InMemoryToolRegistry(), todo_tools(InMemoryTaskStore()))


FACTORIES: dict[str, RegistryFactory] = {
    "todo-memory": todo_memory,
    "todo-sqlite": todo_sqlite,
    "composite": composite,
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def todo_postgres_engine(postgres_server: URL) -> AsyncIterator[AsyncEngine]:
    """A PostgreSQL database of this module's own: its tests count task ids from 1 and use fixed user ids."""
    async with fresh_database(postgres_server) as url:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(metadata.create_all)
            yield engine
        finally:
            await engine.dispose()


@asynccontextmanager
async def todo_postgres(engine: AsyncEngine) -> AsyncIterator[ToolRegistry]:
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE tasks RESTART IDENTITY"))
    yield todo_tools(SqlAlchemyTaskStore(engine))


@pytest.fixture(params=[*FACTORIES, pytest.param("todo-postgres", marks=pytest.mark.integration)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[ToolRegistry]]:
    if request.param == "todo-postgres":
        return functools.partial(todo_postgres, request.getfixturevalue("todo_postgres_engine"))
    return functools.partial(FACTORIES[request.param], tmp_path)


@pytest.fixture
async def registry(factory: Callable[[], AbstractAsyncContextManager[ToolRegistry]]) -> AsyncIterator[ToolRegistry]:
    async with factory() as made:
        yield made


async def add(registry: ToolRegistry, principal: Principal, title: str, **extra: JsonValue) -> int:
    result = await registry.call(principal, "add_task", {"title": title, **extra})
    task_id = result["task_id"]
    assert isinstance(task_id, int)
    return task_id


async def tasks_of(registry: ToolRegistry, principal: Principal, status: str = "all") -> list[dict[str, Any]]:
    result = await registry.call(principal, "list_tasks", {"status": status})
    assert isinstance(result, list)
    return result


async def todo_specs(registry: ToolRegistry) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in await registry.list_tools() if spec.name in TODO_TOOLS}


# --- Schemas ---------------------------------------------------------------------------------------------------


async def test_lists_the_five_todo_tools(registry: ToolRegistry) -> None:
    assert set(await todo_specs(registry)) == TODO_TOOLS


async def test_schemas_are_strict_objects_without_a_user_parameter(registry: ToolRegistry) -> None:
    for spec in await registry.list_tools():
        Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["type"] == "object"
        assert spec.parameters["additionalProperties"] is False, spec.name
        assert spec.description.strip(), spec.name
        names = {name.lower() for name in spec.parameters.get("properties", {})}
        assert not {name for name in names if "user" in name or "owner" in name or "principal" in name}, spec.name


async def test_schemas_state_what_each_tool_requires(registry: ToolRegistry) -> None:
    specs = await todo_specs(registry)
    required = {name: set(spec.parameters.get("required", [])) for name, spec in specs.items()}
    assert required == {
        "add_task": {"title"},
        "list_tasks": set(),
        "complete_task": {"task_id"},
        "delete_task": {"task_id"},
        "update_task": {"task_id"},
    }
    assert specs["list_tasks"].parameters["properties"]["status"]["enum"] == ["all", "pending", "completed"]


_TASK_ID = {
    "type": "integer",
    "minimum": 1,
    "maximum": 2**63 - 1,
    "description": "The task's id, as shown by list_tasks.",
}
HAND_WRITTEN_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "add_task": (
        "Create a new task on the user's todo list. Use a short imperative title such as 'Buy groceries'; "
        "put any extra detail in description. Returns the new task's id.",
        {
            "title": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "description": "Short title of the task, e.g. 'Buy groceries'.",
            },
            "description": {
                "type": "string",
                "maxLength": 5000,
                "description": "Optional longer details, e.g. 'Milk, eggs, bread'.",
            },
        },
    ),
    "list_tasks": (
        "List the user's tasks, oldest first, with their ids. Call this to find a task's id when the user "
        "refers to a task by its name instead of its number.",
        {
            "status": {
                "type": "string",
                "enum": ["all", "pending", "completed"],
                "default": "all",
                "description": "Which tasks to list: 'pending' (not done yet), 'completed', or 'all' (default).",
            }
        },
    ),
    "complete_task": ("Mark one of the user's tasks as completed.", {"task_id": _TASK_ID}),
    "delete_task": ("Delete one of the user's tasks permanently.", {"task_id": _TASK_ID}),
    "update_task": (
        "Change the title and/or the description of one of the user's tasks. "
        "Give at least one of title or description; a field left out stays as it is.",
        {
            "task_id": _TASK_ID,
            "title": {"type": "string", "minLength": 1, "maxLength": 500, "description": "The new title."},
            "description": {
                "type": "string",
                "maxLength": 5000,
                "description": "The new description; an empty string clears it.",
            },
        },
    ),
}


async def test_descriptions_and_schemas_are_the_hand_written_ones_of_before(registry: ToolRegistry) -> None:
    """The todo tools are derived from their signatures now; what the model is told stayed the same."""
    specs = await todo_specs(registry)
    for name, (description, properties) in HAND_WRITTEN_SCHEMAS.items():
        assert specs[name].description == description
        assert specs[name].parameters == {
            "type": "object",
            "properties": properties,
            "required": ["task_id"] if "task_id" in properties else ["title"] if name == "add_task" else [],
            "additionalProperties": False,
        }
        assert specs[name].requires_approval is False


# --- Result shapes ---------------------------------------------------------------------------------------------


async def test_add_task_returns_the_created_task_with_a_stripped_title(registry: ToolRegistry) -> None:
    result = await registry.call(ALICE, "add_task", {"title": "  Buy milk \n"})
    assert result == {"task_id": result["task_id"], "status": "created", "title": "Buy milk"}
    assert isinstance(result["task_id"], int)
    [task] = await tasks_of(registry, ALICE)
    assert (task["id"], task["title"], task["description"], task["completed"]) == (
        result["task_id"],
        "Buy milk",
        None,
        False,
    )


async def test_add_task_keeps_a_description(registry: ToolRegistry) -> None:
    task_id = await add(registry, ALICE, "Buy groceries", description="Milk, eggs")
    [task] = await tasks_of(registry, ALICE)
    assert (task["id"], task["description"]) == (task_id, "Milk, eggs")


async def test_list_tasks_returns_tasks_oldest_first_in_the_documented_shape(registry: ToolRegistry) -> None:
    first = await add(registry, ALICE, "First")
    second = await add(registry, ALICE, "Second")
    tasks = await tasks_of(registry, ALICE)
    assert [t["id"] for t in tasks] == [first, second]
    for task in tasks:
        assert set(task) == TASK_KEYS
        assert isinstance(task["created_at"], str)
        datetime.fromisoformat(task["created_at"])
        assert task["completed"] is False


async def test_list_tasks_filters_by_status_and_defaults_to_all(registry: ToolRegistry) -> None:
    done = await add(registry, ALICE, "Done one")
    open_ = await add(registry, ALICE, "Open one")
    await registry.call(ALICE, "complete_task", {"task_id": done})

    assert [t["id"] for t in await tasks_of(registry, ALICE, "pending")] == [open_]
    assert [t["id"] for t in await tasks_of(registry, ALICE, "completed")] == [done]
    assert [t["id"] for t in await tasks_of(registry, ALICE, "all")] == [done, open_]
    assert [t["id"] for t in await registry.call(ALICE, "list_tasks", {})] == [done, open_]


async def test_list_tasks_is_empty_for_a_new_user(registry: ToolRegistry) -> None:
    assert await tasks_of(registry, ALICE) == []


async def test_complete_task_marks_the_task_completed(registry: ToolRegistry) -> None:
    task_id = await add(registry, ALICE, "Call mom")
    result = await registry.call(ALICE, "complete_task", {"task_id": task_id})
    assert result == {"task_id": task_id, "status": "completed", "title": "Call mom"}
    [task] = await tasks_of(registry, ALICE)
    assert task["completed"] is True


async def test_delete_task_removes_the_task_and_returns_what_it_was(registry: ToolRegistry) -> None:
    keep = await add(registry, ALICE, "Keep")
    gone = await add(registry, ALICE, "Gone")
    result = await registry.call(ALICE, "delete_task", {"task_id": gone})
    assert result == {"task_id": gone, "status": "deleted", "title": "Gone"}
    assert [t["id"] for t in await tasks_of(registry, ALICE)] == [keep]


async def test_update_task_changes_only_the_fields_given(registry: ToolRegistry) -> None:
    task_id = await add(registry, ALICE, "Call mom", description="Sunday")

    result = await registry.call(ALICE, "update_task", {"task_id": task_id, "title": " Call mom tonight "})
    assert result == {"task_id": task_id, "status": "updated", "title": "Call mom tonight"}
    [task] = await tasks_of(registry, ALICE)
    assert (task["title"], task["description"]) == ("Call mom tonight", "Sunday")

    result = await registry.call(ALICE, "update_task", {"task_id": task_id, "description": "Ask about the trip"})
    assert result == {"task_id": task_id, "status": "updated", "title": "Call mom tonight"}
    [task] = await tasks_of(registry, ALICE)
    assert (task["title"], task["description"], task["completed"]) == ("Call mom tonight", "Ask about the trip", False)

    await registry.call(ALICE, "update_task", {"task_id": task_id, "title": "Both", "description": "Changed"})
    [task] = await tasks_of(registry, ALICE)
    assert (task["title"], task["description"]) == ("Both", "Changed")


async def test_a_missing_task_is_task_not_found_naming_the_id(registry: ToolRegistry) -> None:
    calls: list[tuple[str, dict[str, JsonValue]]] = [
        ("complete_task", {"task_id": 999}),
        ("delete_task", {"task_id": 999}),
        ("update_task", {"task_id": 999, "title": "x"}),
    ]
    for name, arguments in calls:
        with pytest.raises(TaskNotFound, match="999"):
            await registry.call(ALICE, name, arguments)


# --- Isolation between users -----------------------------------------------------------------------------------


async def test_another_users_task_is_invisible_and_untouchable(registry: ToolRegistry) -> None:
    task_id = await add(registry, ALICE, "Alice's secret", description="only hers")
    before = await tasks_of(registry, ALICE)

    assert await tasks_of(registry, BOB) == []
    assert await tasks_of(registry, BOB, "pending") == []
    calls: list[tuple[str, dict[str, JsonValue]]] = [
        ("complete_task", {"task_id": task_id}),
        ("update_task", {"task_id": task_id, "title": "Bob was here"}),
        ("update_task", {"task_id": task_id, "description": "Bob was here"}),
        ("delete_task", {"task_id": task_id}),
    ]
    for name, arguments in calls:
        with pytest.raises(ToolError, match=str(task_id)):
            await registry.call(BOB, name, arguments)

    assert await tasks_of(registry, ALICE) == before


async def test_a_user_argument_cannot_redirect_a_call(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="user_id"):
        await registry.call(BOB, "list_tasks", {"user_id": "alice"})
    with pytest.raises(ToolError):
        await registry.call(BOB, "add_task", {"title": "Planted", "user_id": "alice"})
    assert await tasks_of(registry, ALICE) == []
    assert await tasks_of(registry, BOB) == []


# --- Invalid calls ---------------------------------------------------------------------------------------------

INVALID_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("add_task", {}, "title"),
    ("add_task", {"title": 5}, "string"),
    ("add_task", {"title": None}, "string"),
    ("add_task", {"title": ""}, "title"),
    ("add_task", {"title": "   "}, "empty"),
    ("add_task", {"title": "x" * 501}, "long"),
    ("add_task", {"title": "ok", "description": "x" * 5001}, "long"),
    ("add_task", {"title": "ok", "description": 7}, "string"),
    ("add_task", {"title": "ok", "priority": "high"}, "priority"),
    ("list_tasks", {"status": "done"}, "done"),
    ("list_tasks", {"status": "all", "limit": 3}, "limit"),
    ("complete_task", {}, "task_id"),
    ("complete_task", {"task_id": "three"}, "integer"),
    ("complete_task", {"task_id": True}, "integer"),
    ("complete_task", {"task_id": 1.5}, "integer"),
    ("complete_task", {"task_id": 0}, "minimum"),
    ("complete_task", {"task_id": "9" * 40}, "integer"),
    ("complete_task", {"task_id": 2**63}, "maximum"),
    ("delete_task", {"task_id": None}, "integer"),
    ("delete_task", {"task_id": [1]}, "integer"),
    ("update_task", {"task_id": 1}, "title"),
    ("update_task", {"title": "x"}, "task_id"),
    ("update_task", {"task_id": 1, "title": "  "}, "empty"),
    ("update_task", {"task_id": 1, "title": "x", "completed": True}, "completed"),
]


@pytest.mark.parametrize(("name", "arguments", "hint"), INVALID_CALLS)
async def test_invalid_arguments_are_a_tool_error_that_says_what_is_wrong(
    registry: ToolRegistry, name: str, arguments: dict[str, Any], hint: str
) -> None:
    assert await add(registry, ALICE, "Existing") == 1  # the task the update cases aim at exists
    before = await tasks_of(registry, ALICE)
    with pytest.raises(ToolError) as raised:
        await registry.call(ALICE, name, arguments)
    assert not isinstance(raised.value, TaskNotFound)
    assert hint.lower() in raised.value.detail.lower()
    assert len(raised.value.detail) < 300  # a huge argument is not echoed back into the model's context
    assert await tasks_of(registry, ALICE) == before


async def test_arguments_that_are_not_an_object_are_a_tool_error(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="object"):
        await registry.call(ALICE, "add_task", cast(Mapping[str, JsonValue], ["Buy milk"]))


async def test_an_unknown_tool_is_a_tool_error_naming_it(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="launch_rockets"):
        await registry.call(ALICE, "launch_rockets", {})


@pytest.mark.parametrize("raw_id", ["{id}", " {id} ", "{id}.0"])
async def test_numeric_string_ids_are_coerced(registry: ToolRegistry, raw_id: str) -> None:
    task_id = await add(registry, ALICE, "Coerce me")
    as_sent: JsonValue = float(task_id) if raw_id.endswith(".0") else raw_id.format(id=task_id)

    assert await registry.call(ALICE, "update_task", {"task_id": as_sent, "title": "Coerced"}) == {
        "task_id": task_id,
        "status": "updated",
        "title": "Coerced",
    }
    assert (await registry.call(ALICE, "complete_task", {"task_id": as_sent}))["task_id"] == task_id
    assert (await registry.call(ALICE, "delete_task", {"task_id": as_sent}))["task_id"] == task_id
    assert await tasks_of(registry, ALICE) == []


# --- CompositeToolRegistry specifics ---------------------------------------------------------------------------

ECHO = ToolSpec(
    "echo",
    "Echo the text back.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": False},
)


async def echo(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
    return {"said": arguments.get("text"), "to": principal.user_id}


async def test_composite_routes_each_call_to_the_registry_that_owns_the_tool() -> None:
    extra = InMemoryToolRegistry()
    extra.register(ECHO, echo)
    tasks = InMemoryTaskStore()
    tools = CompositeToolRegistry(todo_tools(tasks), extra)

    assert [spec.name for spec in await tools.list_tools()] == [*TODO_TOOL_NAMES, "echo"]
    assert await tools.call(ALICE, "echo", {"text": "hi"}) == {"said": "hi", "to": "alice"}
    await tools.call(ALICE, "add_task", {"title": "Routed"})

    assert extra.calls == [("alice", "echo", {"text": "hi"})]
    assert [task.title for task in tasks.tasks.values()] == ["Routed"]


async def test_composite_routes_before_any_listing_and_sees_tools_added_later() -> None:
    extra = InMemoryToolRegistry()
    tools = CompositeToolRegistry(todo_tools(InMemoryTaskStore()), extra)
    assert (await tools.call(ALICE, "add_task", {"title": "Unlisted"}))["status"] == "created"

    extra.register(ECHO, echo)
    assert await tools.call(BOB, "echo", {"text": "late"}) == {"said": "late", "to": "bob"}


async def test_composite_keeps_the_first_registrys_tool_on_a_duplicate_name_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours, theirs = InMemoryTaskStore(), InMemoryToolRegistry()
    impostor = ToolSpec("add_task", "A mounted server's tool that happens to share our name.", ECHO.parameters)
    theirs.register(impostor, echo)
    theirs.register(ECHO, echo)
    tools = CompositeToolRegistry(todo_tools(ours), theirs)

    for _ in range(3):  # every turn lists the tools: a conflict must not fail any of them
        specs = await tools.list_tools()
        assert [spec.name for spec in specs] == [*TODO_TOOL_NAMES, "echo"]
        assert next(spec for spec in specs if spec.name == "add_task").description != impostor.description

    assert (await tools.call(ALICE, "add_task", {"title": "Ours"}))["status"] == "created"
    assert [task.title for task in ours.tasks.values()] == ["Ours"]
    assert theirs.calls == []
    assert await tools.call(ALICE, "echo", {"text": "still routed"}) == {"said": "still routed", "to": "alice"}
    warnings = [record for record in caplog.records if "offered by both" in record.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert "'add_task'" in warnings[0].getMessage()


async def test_an_empty_composite_lists_nothing_and_refuses_calls() -> None:
    tools = CompositeToolRegistry()
    assert await tools.list_tools() == []
    with pytest.raises(ToolError, match="add_task"):
        await tools.call(ALICE, "add_task", {"title": "x"})
