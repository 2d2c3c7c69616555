"""The todo toolset: five tools over a TaskStore, each bound to the calling principal.

No schema has a user parameter: whose tasks a call touches is decided by the principal
the service passes to ``call``, so a model cannot be talked into reading another user's list.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from chatcore.adapters.todo.model import Task, TaskFilter, TaskNotFound
from chatcore.adapters.todo.ports import TaskStore
from chatcore.errors import ToolError
from chatcore.model import JsonValue, Principal, ToolSpec

MAX_TITLE_LENGTH: Final = 500
MAX_DESCRIPTION_LENGTH: Final = 5000
MAX_TASK_ID: Final = 2**63 - 1
"""The largest BIGINT: a bigger id is refused by the schema instead of overflowing in the database driver."""

_TASK_ID: Final[dict[str, JsonValue]] = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_TASK_ID,
    "description": "The task's id, as shown by list_tasks.",
}
_TITLE: Final[dict[str, JsonValue]] = {"type": "string", "minLength": 1, "maxLength": MAX_TITLE_LENGTH}
_DESCRIPTION: Final[dict[str, JsonValue]] = {"type": "string", "maxLength": MAX_DESCRIPTION_LENGTH}
MAX_ERROR_LENGTH: Final = 200
_NUMERIC_STRING = re.compile(r"\s*\d{1,19}\s*")
"""Digits a model may send for an id; capped so int() never parses a huge string (the schema's maximum refuses it)."""


def _object(properties: dict[str, JsonValue], required: list[str]) -> dict[str, JsonValue]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


ADD_TASK = ToolSpec(
    name="add_task",
    description=(
        "Create a new task on the user's todo list. Use a short imperative title such as 'Buy groceries'; "
        "put any extra detail in description. Returns the new task's id."
    ),
    parameters=_object(
        {
            "title": {**_TITLE, "description": "Short title of the task, e.g. 'Buy groceries'."},
            "description": {**_DESCRIPTION, "description": "Optional longer details, e.g. 'Milk, eggs, bread'."},
        },
        ["title"],
    ),
)
LIST_TASKS = ToolSpec(
    name="list_tasks",
    description=(
        "List the user's tasks, oldest first, with their ids. Call this to find a task's id when the user "
        "refers to a task by its name instead of its number."
    ),
    parameters=_object(
        {
            "status": {
                "type": "string",
                "enum": ["all", "pending", "completed"],
                "default": "all",
                "description": "Which tasks to list: 'pending' (not done yet), 'completed', or 'all' (default).",
            }
        },
        [],
    ),
)
COMPLETE_TASK = ToolSpec(
    name="complete_task",
    description="Mark one of the user's tasks as completed.",
    parameters=_object({"task_id": _TASK_ID}, ["task_id"]),
)
DELETE_TASK = ToolSpec(
    name="delete_task",
    description="Delete one of the user's tasks permanently.",
    parameters=_object({"task_id": _TASK_ID}, ["task_id"]),
)
UPDATE_TASK = ToolSpec(
    name="update_task",
    description=(
        "Change the title and/or the description of one of the user's tasks. "
        "Give at least one of title or description; a field left out stays as it is."
    ),
    parameters=_object(
        {
            "task_id": _TASK_ID,
            "title": {**_TITLE, "description": "The new title."},
            "description": {**_DESCRIPTION, "description": "The new description; an empty string clears it."},
        },
        ["task_id"],
    ),
)

_Handler = Callable[[str, dict[str, Any]], Awaitable[JsonValue]]


@dataclass(frozen=True, slots=True)
class _Tool:
    spec: ToolSpec
    validator: Draft202012Validator
    integer_fields: frozenset[str]
    run: _Handler


class TodoToolRegistry:
    """A ToolRegistry of add/list/complete/delete/update task tools over a TaskStore.

    Arguments are checked against each tool's JSON schema with ``jsonschema``. Models
    sometimes send ``"3"`` for an integer id, so before validation a string of digits
    (and an integral float such as ``3.0``) in an integer field is coerced to ``int``;
    anything else that is not an integer fails validation with a ToolError.
    """

    def __init__(self, tasks: TaskStore) -> None:
        self.tasks = tasks
        handlers: dict[str, tuple[ToolSpec, _Handler]] = {
            "add_task": (ADD_TASK, self._add),
            "list_tasks": (LIST_TASKS, self._list),
            "complete_task": (COMPLETE_TASK, self._complete),
            "delete_task": (DELETE_TASK, self._delete),
            "update_task": (UPDATE_TASK, self._update),
        }
        self._tools: dict[str, _Tool] = {}
        for name, (spec, run) in handlers.items():
            Draft202012Validator.check_schema(spec.parameters)
            properties: Mapping[str, Mapping[str, JsonValue]] = spec.parameters["properties"]
            integers = frozenset(field for field, schema in properties.items() if schema.get("type") == "integer")
            self._tools[name] = _Tool(spec, Draft202012Validator(spec.parameters), integers, run)

    async def list_tools(self) -> list[ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    async def call(self, principal: Principal, name: str, arguments: Mapping[str, JsonValue]) -> JsonValue:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"Unknown tool: {name!r}. Available tools: {', '.join(self._tools)}.")
        if not isinstance(arguments, Mapping):
            raise ToolError(f"Arguments for {name} must be a JSON object.")
        checked = _coerce_integers(dict(arguments), tool.integer_fields)
        error = best_match(tool.validator.iter_errors(checked))
        if error is not None:
            raise ToolError(f"Invalid arguments for {name}: {_describe(error)}")
        return await tool.run(principal.user_id, checked)

    async def _add(self, user_id: str, arguments: dict[str, Any]) -> JsonValue:
        title = _clean_title(arguments["title"])
        description = _clean_description(arguments.get("description")) or None
        task = await self.tasks.add(user_id, title, description)
        return {"task_id": task.id, "status": "created", "title": task.title}

    async def _list(self, user_id: str, arguments: dict[str, Any]) -> JsonValue:
        status: TaskFilter = arguments.get("status", "all")
        return [_task_json(task) for task in await self.tasks.list(user_id, status)]

    async def _complete(self, user_id: str, arguments: dict[str, Any]) -> JsonValue:
        task_id: int = arguments["task_id"]
        task = await _found(task_id, self.tasks.update(user_id, task_id, completed=True))
        return {"task_id": task.id, "status": "completed", "title": task.title}

    async def _delete(self, user_id: str, arguments: dict[str, Any]) -> JsonValue:
        task_id: int = arguments["task_id"]
        task = await _found(task_id, self.tasks.delete(user_id, task_id))
        return {"task_id": task.id, "status": "deleted", "title": task.title}

    async def _update(self, user_id: str, arguments: dict[str, Any]) -> JsonValue:
        task_id: int = arguments["task_id"]
        if "title" not in arguments and "description" not in arguments:
            raise ToolError("update_task needs a new title or a new description (or both).")
        title = _clean_title(arguments["title"]) if "title" in arguments else None
        description = _clean_description(arguments.get("description"))
        task = await _found(task_id, self.tasks.update(user_id, task_id, title=title, description=description))
        return {"task_id": task.id, "status": "updated", "title": task.title}


def _coerce_integers(arguments: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """Turn "3" and 3.0 into 3 in integer fields; leave everything else for the validator to judge."""
    for field in fields & arguments.keys():
        value = arguments[field]
        numeric_string = isinstance(value, str) and _NUMERIC_STRING.fullmatch(value) is not None
        integral_float = isinstance(value, float) and value.is_integer()
        if numeric_string or integral_float:
            arguments[field] = int(value)
    return arguments


def _describe(error: ValidationError) -> str:
    """jsonschema's message, without echoing a huge argument back into the model's context."""
    where = f"{error.json_path.removeprefix('$.')} " if error.path else ""
    if error.validator == "maxLength":
        return f"{where}must be at most {error.validator_value} characters long"
    if error.validator == "minLength":
        return f"{where}must not be empty"
    message = error.message if len(error.message) <= MAX_ERROR_LENGTH else error.message[:MAX_ERROR_LENGTH] + "…"
    return f"{where}is invalid: {message}" if where else message


def _clean_title(title: str) -> str:
    stripped = title.strip()
    if not stripped:
        raise ToolError("The task title must not be empty or only whitespace.")
    return stripped


def _clean_description(description: str | None) -> str | None:
    return None if description is None else description.strip()


async def _found(task_id: int, operation: Awaitable[Task]) -> Task:
    """The store's task, or a TaskNotFound that tells the model how to recover."""
    try:
        return await operation
    except TaskNotFound as error:
        raise TaskNotFound(
            f"Task {task_id} not found. Call list_tasks to see the user's tasks and their ids."
        ) from error


def _task_json(task: Task) -> dict[str, JsonValue]:
    return {
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "completed": task.completed,
        "created_at": task.created_at.isoformat(),
    }
