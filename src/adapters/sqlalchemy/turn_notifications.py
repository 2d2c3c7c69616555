"""AsyncpgTurnNotifications: the streamed turns' notices by PostgreSQL LISTEN, one dedicated connection per process.

``SqlAlchemyTurnEventStore``'s writes on PostgreSQL notify ``turn_event_statements.CHANNEL`` in their own
statement (so in the same transaction, delivered at commit): ``<turn id>:<last seq>`` when events were stored,
``<turn id>:stop`` when a stop was requested. This process LISTENs on one connection of its own, opened with
the engine's dialect and URL (outside the pool, which it would otherwise hold a slot of forever), and hands
each notice to the watches of its turn.

When that connection is lost (a database restart, a network failure) the watches fall back to polling and get
``CHECK``; the listener connects again every ``retry_seconds`` and, once back, tells every watch to ``CHECK``,
since notices sent meanwhile went nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from chatcore.adapters.sqlalchemy.turn_event_statements import CHANNEL, STOP
from chatcore.model import TurnNotice
from chatcore.turn_events import TurnWatches

logger = logging.getLogger("chatcore.adapters.sqlalchemy.turn_notifications")


class AsyncpgTurnNotifications(TurnWatches):
    """A ``chatcore.ports.TurnNotifications`` on a PostgreSQL engine using asyncpg. ``start()`` it, ``aclose()`` it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_seconds: float = 0.25,
        retry_seconds: float = 1.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(poll_seconds=poll_seconds, listening=self._listening)
        self._engine = engine
        self.retry_seconds = retry_seconds
        self.connect_timeout = connect_timeout
        self._connection: Any = None  # asyncpg.Connection while listening
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        """Set while it listens."""

    def _listening(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed()

    def start(self) -> None:
        """Connect in the background (a database that is not there yet delays notices, not the start)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_listening(), name="chatcore-turn-notifications")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    async def _keep_listening(self) -> None:
        while True:
            try:
                await self._listen()
                await self._lost.wait()
                logger.warning("turn notifications lost their connection", extra={"event": "turn_listener_lost"})
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning(
                    "turn notifications cannot listen: %s", type(error).__name__, extra={"event": "turn_listener_down"}
                )
            await self._disconnect()
            self.deliver_all(TurnNotice.CHECK)  # waiters switch to polling until the connection is back
            await asyncio.sleep(self.retry_seconds)

    async def _listen(self) -> None:
        dialect = self._engine.dialect
        arguments, options = dialect.create_connect_args(self._engine.url)
        options.setdefault("timeout", self.connect_timeout)
        adapted = await greenlet_spawn(dialect.connect, *arguments, **options)
        connection = adapted.driver_connection
        self._lost.clear()
        connection.add_termination_listener(self._on_lost)
        await connection.add_listener(CHANNEL, self._on_notice)
        self._connection = connection
        self.connected.set()
        self.deliver_all(TurnNotice.CHECK)  # whatever was sent before it listened

    def _on_notice(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        turn_id, _, what = payload.partition(":")
        self.deliver(turn_id, TurnNotice.STOP if what == STOP else TurnNotice.EVENTS)

    def _on_lost(self, _connection: Any) -> None:
        self._lost.set()

    async def _disconnect(self) -> None:
        self.connected.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)
