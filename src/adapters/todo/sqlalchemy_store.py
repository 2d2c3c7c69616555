"""SqlAlchemyTaskStore: the todo toolset's tasks in PostgreSQL or SQLite.

Its ``tasks`` table is registered on chatcore's SQLAlchemy metadata (``adapters/sqlalchemy/tables.py``), so
chatcore's Alembic migrations create it. Every statement filters by ``user_id`` and writes with RETURNING,
so each call is one statement and another user's task id simply matches no row. A statement run alone is
atomic, so on PostgreSQL each call runs on an autocommit connection: one round trip, where a transaction
around it would add BEGIN and COMMIT (a tool call's 3 round trips become 1).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import tasks
from chatcore.adapters.todo.model import Task, TaskFilter, TaskNotFound
from chatcore.model import utcnow

_TASK_COLUMNS = tuple(tasks.c)
_MAX_TASK_ID = 2**63 - 1
"""Ids beyond BIGINT name no task; checked here because the drivers would raise overflow errors instead."""


class SqlAlchemyTaskStore:
    """A ``TaskStore`` (``chatcore.adapters.todo.ports``) on an AsyncEngine from ``engine.create_engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None
        )

    def _one_statement(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one statement: autocommit on PostgreSQL, else a transaction (SQLite's BEGIN)."""
        return self._engine.begin() if self._autocommit is None else self._autocommit.connect()

    async def add(self, user_id: str, title: str, description: str | None = None) -> Task:
        now = utcnow()
        statement = (
            insert(tasks)
            .values(
                user_id=user_id, title=title, description=description, completed=False, created_at=now, updated_at=now
            )
            .returning(*_TASK_COLUMNS)
        )
        async with store_unavailable_on_outage(), self._one_statement() as connection:
            row = (await connection.execute(statement)).one()
        return _task_from(row._mapping)

    async def list(self, user_id: str, status: TaskFilter = "all") -> list[Task]:
        statement = select(*_TASK_COLUMNS).where(tasks.c.user_id == user_id).order_by(tasks.c.id)
        if status == "pending":
            statement = statement.where(tasks.c.completed.is_(False))
        elif status == "completed":
            statement = statement.where(tasks.c.completed.is_(True))
        async with store_unavailable_on_outage(), self._one_statement() as connection:
            rows = (await connection.execute(statement)).all()
        return [_task_from(row._mapping) for row in rows]

    async def update(
        self,
        user_id: str,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        completed: bool | None = None,
    ) -> Task:
        _check_id(task_id)
        changes: dict[str, Any] = {"updated_at": utcnow()}
        if title is not None:
            changes["title"] = title
        if description is not None:
            changes["description"] = description
        if completed is not None:
            changes["completed"] = completed
        statement = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.user_id == user_id)
            .values(**changes)
            .returning(*_TASK_COLUMNS)
        )
        async with store_unavailable_on_outage(), self._one_statement() as connection:
            row = (await connection.execute(statement)).one_or_none()
        if row is None:
            raise TaskNotFound(f"Task {task_id} not found")
        return _task_from(row._mapping)

    async def delete(self, user_id: str, task_id: int) -> Task:
        _check_id(task_id)
        statement = delete(tasks).where(tasks.c.id == task_id, tasks.c.user_id == user_id).returning(*_TASK_COLUMNS)
        async with store_unavailable_on_outage(), self._one_statement() as connection:
            row = (await connection.execute(statement)).one_or_none()
        if row is None:
            raise TaskNotFound(f"Task {task_id} not found")
        return _task_from(row._mapping)


def _check_id(task_id: int) -> None:
    if not 0 < task_id <= _MAX_TASK_ID:
        raise TaskNotFound(f"Task {task_id} not found")


def _task_from(row: RowMapping) -> Task:
    return Task(
        id=row["id"],
        user_id=row["user_id"],
        title=row["title"],
        description=row["description"],
        completed=bool(row["completed"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
