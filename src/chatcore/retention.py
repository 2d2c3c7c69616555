"""Bounded storage: what has expired is deleted in small batches, by ``chatcore gc`` or the janitor in each server.

A streamed turn writes an event per piece of its reply, and every keyed request leaves a
reply for retries, so without deletes those tables grow for ever. Finished turns' events
(and then the turns themselves) are kept ``event_retention_seconds``; Idempotency-Keys until
their own expiry. A running turn and a conversation's messages are never deleted here.

Each delete is one short transaction of at most ``batch_size`` rows. The janitor of every
replica wakes up about every ``interval_seconds``, and sweeps only when it gets the store's
maintenance lock (one replica at a time); ``chatcore gc`` sweeps until nothing expired is left.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from chatcore.errors import TurnAbandoned
from chatcore.model import utcnow
from chatcore.ports import RetentionStore
from chatcore.turn_events import ErrorBody, plain_error_body

logger = logging.getLogger("chatcore.retention")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    event_retention_seconds: float = 7 * 86_400.0
    """How long a finished turn's events (and the turn) are kept (``CHATCORE_EVENT_RETENTION``)."""
    interval_seconds: float = 60.0
    """How often each server's janitor tries to sweep (``CHATCORE_JANITOR_INTERVAL``)."""
    batch_size: int = 1_000
    """Rows per delete: one short transaction each."""
    batches_per_pass: int = 100
    """A janitor pass stops after this many batches of a kind and carries on at its next pass."""
    lease_seconds: float = 120.0
    """The turns' lease (``CHATCORE_LEASE_SECONDS``): a running turn older than this whose lease expired or went to
    another turn is dead, and closed by a sweep."""


@dataclass(frozen=True, slots=True)
class Swept:
    """How many rows a sweep deleted, of each kind."""

    turn_events: int = 0
    turns: int = 0
    idempotency_keys: int = 0
    dead_turns: int = 0
    """Not deleted: turns whose server died, closed (``RetentionStore.close_dead_turns``)."""

    @property
    def total(self) -> int:
        return self.turn_events + self.turns + self.idempotency_keys + self.dead_turns


Delete = Callable[[int], Awaitable[int]]


class Janitor:
    """Deletes what the ``RetentionPolicy`` says has expired, through a ``RetentionStore``."""

    def __init__(
        self,
        store: RetentionStore,
        policy: RetentionPolicy | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        error_body: ErrorBody = plain_error_body,
    ) -> None:
        self.store = store
        self.policy = policy or RetentionPolicy()
        self.clock = clock
        self.error_body = error_body
        """The ``error`` event's data that ends a dead turn's log (the HTTP app's has the status code)."""

    async def sweep(self, *, batches: int | None = None) -> Swept:
        """Close dead turns, then delete what has expired, batch after batch until a batch comes back short (or
        after ``batches``)."""
        now = self.clock()
        ended_before = now - timedelta(seconds=self.policy.event_retention_seconds)
        store = self.store
        quiet_before = now - timedelta(seconds=self.policy.lease_seconds)
        error = self.error_body(TurnAbandoned())
        dead = await self._drain(
            lambda n: self._closed(store.close_dead_turns(quiet_before=quiet_before, error=error, limit=n)), 1
        )
        events = await self._drain(lambda n: store.delete_turn_events(ended_before=ended_before, limit=n), batches)
        turns = await self._drain(lambda n: store.delete_turns(ended_before=ended_before, limit=n), batches)
        keys = await self._drain(lambda n: store.delete_idempotency_keys(expired_by=now, limit=n), batches)
        return Swept(turn_events=events, turns=turns, idempotency_keys=keys, dead_turns=dead)

    @staticmethod
    async def _closed(closing: Awaitable[tuple[object, ...]]) -> int:
        return len(await closing)

    async def _drain(self, delete: Delete, batches: int | None) -> int:
        deleted, done = 0, 0
        while True:
            count = await delete(self.policy.batch_size)
            deleted, done = deleted + count, done + 1
            if count < self.policy.batch_size or (batches is not None and done >= batches):
                return deleted

    async def sweep_alone(self) -> Swept | None:
        """One janitor pass, if no other process (replica) is sweeping now: None when one is."""
        async with self.store.exclusive() as alone:
            if not alone:
                return None
            return await self.sweep(batches=self.policy.batches_per_pass)

    async def run(self) -> None:
        """Sweep about every ``interval_seconds`` until cancelled. A failed pass (the database is down) is logged
        and tried again at the next one; the jitter keeps replicas started together from trying together."""
        while True:
            await asyncio.sleep(self.policy.interval_seconds * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            try:
                swept = await self.sweep_alone()
            except Exception as error:
                logger.warning("janitor pass failed: %s", type(error).__name__, extra={"event": "janitor_failed"})
                continue
            if swept is not None and swept.total:
                logger.info(
                    "janitor swept %d rows",
                    swept.total,
                    extra={
                        "event": "janitor_swept",
                        "turn_events": swept.turn_events,
                        "turns": swept.turns,
                        "idempotency_keys": swept.idempotency_keys,
                        "dead_turns": swept.dead_turns,
                    },
                )
