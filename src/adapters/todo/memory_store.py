"""InMemoryTaskStore: the todo app's tasks in a dict, for tests and the offline demo; it runs the TaskStore contract."""

from __future__ import annotations

import itertools
from dataclasses import replace

from chatcore.adapters.todo.model import Task, TaskFilter, TaskNotFound
from chatcore.model import utcnow


class InMemoryTaskStore:
    """A TaskStore in a dict, with ids that count up like a database sequence."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)

    def _owned(self, user_id: str, task_id: int) -> Task:
        task = self.tasks.get(task_id)
        if task is None or task.user_id != user_id:
            raise TaskNotFound(f"Task {task_id} not found")
        return task

    async def add(self, user_id: str, title: str, description: str | None = None) -> Task:
        now = utcnow()
        task = Task(next(self._ids), user_id, title, description, False, now, now)
        self.tasks[task.id] = task
        return task

    async def list(self, user_id: str, status: TaskFilter = "all") -> list[Task]:
        tasks = [t for t in self.tasks.values() if t.user_id == user_id]
        if status == "pending":
            tasks = [t for t in tasks if not t.completed]
        elif status == "completed":
            tasks = [t for t in tasks if t.completed]
        return sorted(tasks, key=lambda t: t.id)

    async def update(
        self,
        user_id: str,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> Task:
        task = self._owned(user_id, task_id)
        task = replace(
            task,
            title=task.title if title is None else title,
            description=task.description if description is None else description,
            completed=task.completed if completed is None else completed,
            updated_at=utcnow(),
        )
        self.tasks[task_id] = task
        return task

    async def delete(self, user_id: str, task_id: int) -> Task:
        return self.tasks.pop(self._owned(user_id, task_id).id)
