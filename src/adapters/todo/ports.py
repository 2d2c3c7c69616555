"""The todo app's one port: where tasks are kept."""

from __future__ import annotations

from typing import Protocol

from chatcore.adapters.todo.model import Task, TaskFilter


class TaskStore(Protocol):
    """The todo toolset's tasks, scoped by ``user_id``: another user's task is TaskNotFound."""

    async def add(self, user_id: str, title: str, description: str | None = None) -> Task: ...

    async def list(self, user_id: str, status: TaskFilter = "all") -> list[Task]:
        """Tasks oldest first."""
        ...

    async def update(
        self,
        user_id: str,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> Task:
        """Change the fields given (None leaves a field alone). Raises TaskNotFound."""
        ...

    async def delete(self, user_id: str, task_id: int) -> Task:
        """Remove the task and return it as it was. Raises TaskNotFound."""
        ...
