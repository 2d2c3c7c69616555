"""The todo app's data: a task, the filter a list takes, and the refusal for a task the user does not have."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from chatcore.errors import ToolError

TaskFilter = Literal["all", "pending", "completed"]


@dataclass(frozen=True, slots=True)
class Task:
    """A todo item. Integer ids because todo frontends expect them."""

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


class TaskNotFound(ToolError):
    """A task id unknown to this user; also the answer for another user's task. A ToolError, so the model hears it."""

    default_detail = "Task not found"
