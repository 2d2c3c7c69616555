"""The todo toolset: five tools over a TaskStore, each bound to the calling principal, made with ``@tool``.

``todo_tools(tasks)`` builds them as closures over the store, so the registry holds no per-user state. No
schema has a user parameter: whose tasks a call touches is the ``Principal`` the service passes to ``call``,
so a model cannot be talked into reading another user's list. The schemas are derived from the signatures
(``chatcore.tools``) and are exactly the hand-written ones of before; so are the arguments' checks: a title
of 1-500 characters, an id between 1 and the largest BIGINT (``"3"``, `` 3 `` and ``3.0`` are read as 3).
A description left out (``msgspec.UNSET``) is not the same as an empty one, which clears it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Final

from msgspec import UNSET, Meta, UnsetType

from chatcore.adapters.todo.model import Task, TaskFilter, TaskNotFound
from chatcore.adapters.todo.ports import TaskStore
from chatcore.errors import ToolError
from chatcore.model import JsonValue, Principal
from chatcore.tools import FunctionToolRegistry, tool

MAX_TITLE_LENGTH: Final = 500
MAX_DESCRIPTION_LENGTH: Final = 5000
MAX_TASK_ID: Final = 2**63 - 1
"""The largest BIGINT: a bigger id is refused by the schema instead of overflowing in the database driver."""

TaskId = Annotated[int, Meta(ge=1, le=MAX_TASK_ID, description="The task's id, as shown by list_tasks.")]
Title = Annotated[str, Meta(min_length=1, max_length=MAX_TITLE_LENGTH)]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_LENGTH)]
Status = Annotated[
    TaskFilter, Meta(description="Which tasks to list: 'pending' (not done yet), 'completed', or 'all' (default).")
]


def todo_tools(tasks: TaskStore) -> FunctionToolRegistry:
    """The add/list/complete/delete/update task tools over ``tasks``."""

    @tool
    async def add_task(
        principal: Principal, title: Title, description: Description | UnsetType = UNSET
    ) -> dict[str, JsonValue]:
        """Create a new task on the user's todo list. Use a short imperative title such as 'Buy groceries';
        put any extra detail in description. Returns the new task's id.

        Args:
            title: Short title of the task, e.g. 'Buy groceries'.
            description: Optional longer details, e.g. 'Milk, eggs, bread'.
        """
        task = await tasks.add(principal.user_id, _clean_title(title), _clean_description(description) or None)
        return {"task_id": task.id, "status": "created", "title": task.title}

    @tool
    async def list_tasks(principal: Principal, status: Status = "all") -> list[dict[str, JsonValue]]:
        """List the user's tasks, oldest first, with their ids. Call this to find a task's id when the user
        refers to a task by its name instead of its number.
        """
        return [_task_json(task) for task in await tasks.list(principal.user_id, status)]

    @tool
    async def complete_task(principal: Principal, task_id: TaskId) -> dict[str, JsonValue]:
        """Mark one of the user's tasks as completed."""
        task = await _found(task_id, tasks.update(principal.user_id, task_id, completed=True))
        return {"task_id": task.id, "status": "completed", "title": task.title}

    @tool
    async def delete_task(principal: Principal, task_id: TaskId) -> dict[str, JsonValue]:
        """Delete one of the user's tasks permanently."""
        task = await _found(task_id, tasks.delete(principal.user_id, task_id))
        return {"task_id": task.id, "status": "deleted", "title": task.title}

    @tool
    async def update_task(
        principal: Principal,
        task_id: TaskId,
        title: Title | UnsetType = UNSET,
        description: Description | UnsetType = UNSET,
    ) -> dict[str, JsonValue]:
        """Change the title and/or the description of one of the user's tasks.
        Give at least one of title or description; a field left out stays as it is.

        Args:
            title: The new title.
            description: The new description; an empty string clears it.
        """
        if title is UNSET and description is UNSET:
            raise ToolError("update_task needs a new title or a new description (or both).")
        new_title = None if title is UNSET else _clean_title(title)
        update = tasks.update(principal.user_id, task_id, title=new_title, description=_clean_description(description))
        task = await _found(task_id, update)
        return {"task_id": task.id, "status": "updated", "title": task.title}

    return FunctionToolRegistry([add_task, list_tasks, complete_task, delete_task, update_task])


def _clean_title(title: str) -> str:
    stripped = title.strip()
    if not stripped:
        raise ToolError("The task title must not be empty or only whitespace.")
    return stripped


def _clean_description(description: str | UnsetType) -> str | None:
    return None if description is UNSET else description.strip()


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
