"""The TurnNotifications contract: the in-memory fake and PostgreSQL LISTEN/NOTIFY (asyncpg), each with the
TurnEventStore whose writes notify it. SQLite has none: its watches poll (the last test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.turn_notifications import AsyncpgTurnNotifications
from chatcore.fakes import InMemoryTurnEventStore, InMemoryTurnNotifications
from chatcore.model import ChatMessage, TurnEvent, TurnNotice, TurnStatus
from chatcore.turn_events import TurnWatches
from tests.stores import ConversationStores, in_memory, on_engine

EVENTS, STOP, CHECK = TurnNotice.EVENTS, TurnNotice.STOP, TurnNotice.CHECK
SOON = 5.0
"""Long enough for a notice to arrive on a loaded machine."""
QUIET = 0.3
"""Long enough to see a notice that should not come."""


@dataclass
class Notified:
    stores: ConversationStores
    notifications: InMemoryTurnNotifications | AsyncpgTurnNotifications

    async def lose_connection(self) -> None:
        """What a database restart does to the listener."""
        if isinstance(self.notifications, InMemoryTurnNotifications):
            self.notifications.connected = False
            return
        dsn = str(self.notifications._engine.url.set(drivername="postgresql"))
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        finally:
            await connection.close()

    async def reconnected(self) -> None:
        if isinstance(self.notifications, InMemoryTurnNotifications):
            self.notifications.reconnected()
            return
        await asyncio.wait_for(self.notifications.connected.wait(), SOON)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest) -> AsyncEngine | None:
    """The database of the backend: none in memory."""
    return None if request.param == "memory" else request.getfixturevalue("pg_engine")


@pytest.fixture
async def notified(engine: AsyncEngine | None) -> AsyncIterator[Notified]:
    if engine is None:
        stores = in_memory()
        fake = InMemoryTurnNotifications(poll_seconds=0.05)
        events = stores.events
        assert isinstance(events, InMemoryTurnEventStore)
        events.notifications = fake
        yield Notified(stores, fake)
        return
    listener = AsyncpgTurnNotifications(engine, poll_seconds=0.05, retry_seconds=0.1)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), SOON)
        yield Notified(on_engine(engine), listener)
    finally:
        await listener.aclose()


async def running_turn(stores: ConversationStores, user: str) -> tuple[uuid.UUID, uuid.UUID]:
    start = await stores.store.begin_turn(user, None, ChatMessage.user("hi"), turn_id=uuid.uuid4(), history_limit=10)
    turn_id = uuid.uuid4()
    await stores.events.begin(user, start.conversation.id, turn_id, [TurnEvent(turn_id, 1, "turn", {})])
    return start.conversation.id, turn_id


def delta(turn_id: uuid.UUID, seq: int) -> TurnEvent:
    return TurnEvent(turn_id, seq, "delta", {"text": f"piece {seq}"})


def user() -> str:
    return f"user-{uuid.uuid4().hex}"


async def test_stored_events_and_the_end_wake_the_watchers_of_their_turn_only(notified: Notified) -> None:
    alice = user()
    _, turn_id = await running_turn(notified.stores, alice)
    _, other_turn = await running_turn(notified.stores, alice)
    watch, bystander = notified.notifications.watch(turn_id), notified.notifications.watch(other_turn)

    await notified.stores.events.append(alice, [delta(turn_id, 2), delta(turn_id, 3)])
    assert await watch.wait(SOON) == {EVENTS}
    await notified.stores.events.end(alice, turn_id, TurnStatus.COMPLETE, [TurnEvent(turn_id, 4, "done", {})])
    assert await watch.wait(SOON) == {EVENTS}

    assert await bystander.wait(QUIET) == frozenset()
    watch.close()
    bystander.close()


async def test_a_stop_request_wakes_the_watchers_of_the_running_turns(notified: Notified) -> None:
    alice = user()
    conversation_id, turn_id = await running_turn(notified.stores, alice)
    first, second = notified.notifications.watch(turn_id), notified.notifications.watch(turn_id)

    assert await notified.stores.events.request_stop(alice, conversation_id) == (turn_id,)

    assert STOP in await first.wait(SOON)
    assert STOP in await second.wait(SOON)
    first.close()
    second.close()


async def test_notices_wait_for_their_watcher_and_a_closed_watch_gets_none(notified: Notified) -> None:
    alice = user()
    conversation_id, turn_id = await running_turn(notified.stores, alice)
    kept, closed = notified.notifications.watch(turn_id), notified.notifications.watch(turn_id)
    closed.close()

    await notified.stores.events.append(alice, [delta(turn_id, 2)])
    await notified.stores.events.request_stop(alice, conversation_id)
    await asyncio.sleep(QUIET)  # both delivered while nobody waits

    notices = set(await kept.wait(SOON))
    if STOP not in notices:  # two notices may come one at a time
        notices |= await kept.wait(SOON)
    assert notices == {EVENTS, STOP}
    assert await closed.wait(QUIET) == frozenset()
    kept.close()


async def test_a_lost_listener_makes_watches_poll_then_check_once_it_is_back(notified: Notified) -> None:
    alice = user()
    _, turn_id = await running_turn(notified.stores, alice)
    watch = notified.notifications.watch(turn_id)

    await notified.lose_connection()
    assert await watch.wait(SOON) == {CHECK}  # told once it is lost (PostgreSQL), or polling (every poll_seconds)
    await notified.reconnected()
    assert CHECK in await watch.wait(SOON)  # whatever was sent meanwhile went nowhere: read the store

    while await watch.wait(QUIET):  # what the outage left behind
        pass
    await notified.stores.events.append(alice, [delta(turn_id, 2)])
    assert await watch.wait(SOON) == {EVENTS}
    watch.close()


async def test_watches_without_notifications_poll() -> None:
    watch = TurnWatches(poll_seconds=0.01, listening=lambda: False).watch(uuid.uuid4())

    assert await watch.wait() == {CHECK}
    assert await watch.wait(5.0) == {CHECK}
    watch.close()
