"""SqlAlchemyRetentionStore: expired turn events, turns and Idempotency-Keys deleted in batches.

Each delete is one statement choosing at most ``limit`` rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two deleting processes never wait on each other) and deleting them. The
maintenance lock is a PostgreSQL session advisory lock, held on one connection for the
sweep: the server releases it when that connection ends, so a killed holder never keeps it.
SQLite serves one host: there the lock is this store object's (one janitor per process), and processes
may sweep together, which is safe.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime

from sqlalchemy import Delete, delete, exists, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatcore.adapters.sqlalchemy import dead_turns
from chatcore.adapters.sqlalchemy import idempotency as keys
from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import turn_events, turns
from chatcore.model import JsonValue, TurnStatus, utcnow

logger = logging.getLogger("chatcore.adapters.sqlalchemy")

MAINTENANCE_LOCK = 0x63686174636F7265
"""The advisory lock's key: "chatcore" in ASCII, as a 64-bit integer."""


class SqlAlchemyRetentionStore:
    """A ``chatcore.ports.RetentionStore`` on an AsyncEngine from ``engine.create_engine``."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._held_here = False

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        if self._engine.dialect.name != "postgresql":
            held, self._held_here = not self._held_here, True
            try:
                yield held
            finally:
                if held:
                    self._held_here = False
            return
        async with store_unavailable_on_outage(), self._autocommit.connect() as connection:
            held = bool(await connection.scalar(select(func.pg_try_advisory_lock(MAINTENANCE_LOCK))))
            try:
                yield held
            finally:
                if held:
                    await _unlock(connection)

    async def delete_turn_events(self, *, ended_before: datetime, limit: int) -> int:
        chosen = (
            select(turn_events.c.turn_id, turn_events.c.seq)
            .join(turns, turns.c.id == turn_events.c.turn_id)
            .where(turns.c.status != TurnStatus.RUNNING.value, turns.c.updated_at < ended_before)
            .limit(max(limit, 0))
            .with_for_update(of=turn_events, skip_locked=True)
        )
        statement = delete(turn_events).where(tuple_(turn_events.c.turn_id, turn_events.c.seq).in_(chosen))
        return await self._deleted(statement)

    async def delete_turns(self, *, ended_before: datetime, limit: int) -> int:
        chosen = (
            select(turns.c.id)
            .where(
                turns.c.status != TurnStatus.RUNNING.value,
                turns.c.updated_at < ended_before,
                ~exists().where(turn_events.c.turn_id == turns.c.id),
            )
            .limit(max(limit, 0))
            .with_for_update(skip_locked=True)
        )
        return await self._deleted(delete(turns).where(turns.c.id.in_(chosen)))

    async def close_dead_turns(
        self, *, quiet_before: datetime, error: Mapping[str, JsonValue], limit: int
    ) -> tuple[uuid.UUID, ...]:
        """The candidates in one read, then each conversation closed in a transaction of its own."""
        now = self._clock()
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            chosen = await dead_turns.candidates(connection, now=now, quiet_before=quiet_before, limit=limit)
        closed: list[uuid.UUID] = []
        for user_id, conversation_id in chosen:
            async with store_unavailable_on_outage(), self._engine.begin() as connection:
                closed.extend(
                    await dead_turns.close_dead(
                        connection, user_id, conversation_id, now=now, quiet_before=quiet_before, error=error
                    )
                )
        return tuple(closed)

    async def delete_idempotency_keys(self, *, expired_by: datetime, limit: int) -> int:
        return await self._deleted(keys.purge(expired_by, limit))

    async def _deleted(self, statement: Delete) -> int:
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount)


async def _unlock(connection: AsyncConnection) -> None:
    """Give the lock back; if that fails, close the connection, which gives it back too (it must not go back to
    the pool still holding the lock)."""
    try:
        await connection.scalar(select(func.pg_advisory_unlock(MAINTENANCE_LOCK)))
    except Exception:
        logger.warning("could not release the maintenance lock; closing its connection", exc_info=True)
        with contextlib.suppress(Exception):
            await connection.invalidate()
