"""The todo app, as one toolset package: its model, its store port and stores, its tools and its prompt.

chatcore's domain knows nothing of tasks; the container mounts this toolset by default (``todo_tools`` over
``SqlAlchemyTaskStore``, with ``TODO_SYSTEM_PROMPT``). ``InMemoryTaskStore`` is its fake, for tests and the demo.
"""

from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.model import Task, TaskFilter, TaskNotFound
from chatcore.adapters.todo.ports import TaskStore
from chatcore.adapters.todo.prompt import TODO_SYSTEM_PROMPT
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.adapters.todo.tools import todo_tools

__all__ = [
    "TODO_SYSTEM_PROMPT",
    "InMemoryTaskStore",
    "SqlAlchemyTaskStore",
    "Task",
    "TaskFilter",
    "TaskNotFound",
    "TaskStore",
    "todo_tools",
]
