"""On PostgreSQL a streamed turn and its followers wait on LISTEN/NOTIFY: while nothing happens, nothing is asked.

Counted on the wire (``bench/pgwire.py``'s proxy between the stores and PostgreSQL): a turn whose model is
quiet for 5 s, followed from another replica, costs no statement in that time; a stop sent from the other
replica reaches it all the same, and the follower gets every event once, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from bench.pgwire import Counts, WireCounter
from sqlalchemy.engine import make_url

from chatcore.adapters.sqlalchemy.engine import create_engine
from chatcore.adapters.sqlalchemy.turn_notifications import AsyncpgTurnNotifications
from chatcore.fakes import InMemoryToolRegistry, StaticTokenVerifier
from chatcore.model import AgentRequest, AgentResponse, AgentStreamEvent, Principal, TextDelta, TurnEvent
from chatcore.service import ChatService
from chatcore.streamed_turns import StreamPolicy, TurnStreamer
from tests.stores import on_engine

pytestmark = pytest.mark.integration

ALICE = Principal("alice-no-polling", "alice@example.com")
QUIET_SECONDS = 5.0


class QuietAgent:
    """Says a word, then nothing until cancelled (a stop)."""

    provider = "quiet"

    def __init__(self) -> None:
        self.quiet = asyncio.Event()

    async def complete(self, request: AgentRequest) -> AgentResponse:
        raise NotImplementedError

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        yield TextDelta("Hello ")
        self.quiet.set()
        await asyncio.Event().wait()
        yield AgentResponse("never")


async def collect(events: AsyncIterator[TurnEvent], into: list[TurnEvent], seen: asyncio.Event | None = None) -> None:
    """``events`` into ``into``; ``seen`` is set once the first delta is in."""
    async for event in events:
        into.append(event)
        if seen is not None and event.type == "delta":
            seen.set()


async def listening(notifications: AsyncpgTurnNotifications) -> AsyncpgTurnNotifications:
    notifications.start()
    await asyncio.wait_for(notifications.connected.wait(), 10)
    return notifications


async def test_a_quiet_turn_and_its_follower_on_another_replica_ask_nothing_and_a_stop_still_arrives(
    postgres_url: str,
) -> None:
    url = make_url(postgres_url)
    counter = WireCounter((url.host or "127.0.0.1", url.port or 5432))
    port = await counter.listen("stores")
    engine = create_engine(url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), pool_size=5)
    here = await listening(AsyncpgTurnNotifications(engine))
    there = await listening(AsyncpgTurnNotifications(engine))  # another replica's listener
    stores = on_engine(engine)
    agent = QuietAgent()
    service = ChatService(
        store=stores.store,
        claims=stores.claims,
        agent=agent,
        verifier=StaticTokenVerifier(),
        tools=InMemoryToolRegistry(),
    )  # type: ignore[arg-type]
    # A follower asks whether a quiet turn's server died (issue 17's dead-turn probe, a query of its own) only once
    # the turn has been quiet dead_after_seconds (6 s by default: a live turn writes at least every 5 s); set beyond
    # the 5 s counted here so that a late wake-up on a loaded machine does not count a probe.
    assert StreamPolicy().dead_after_seconds > StreamPolicy().max_write_seconds
    policy = StreamPolicy(dead_after_seconds=QUIET_SECONDS + 10)
    replica, other_replica = (
        TurnStreamer(service, stores.events, policy=policy, notifications=here),
        TurnStreamer(service, stores.events, policy=policy, notifications=there),
    )
    live: list[TurnEvent] = []
    followed: list[TurnEvent] = []
    try:
        running = asyncio.create_task(collect(await replica.start(ALICE, "Say hello"), live))
        async with asyncio.timeout(10):
            await agent.quiet.wait()
        turn = live[0].data
        conversation_id, turn_id = uuid.UUID(str(turn["conversation_id"])), uuid.UUID(str(turn["turn_id"]))
        hello = asyncio.Event()  # "Hello " is in the log (its batch is written a moment after it was said)
        following = asyncio.create_task(
            collect(await other_replica.resume(ALICE.user_id, conversation_id, turn_id), followed, hello)
        )
        await asyncio.wait_for(hello.wait(), 10)

        before = Counts(*counter.counts["stores"].astuple())
        await asyncio.sleep(QUIET_SECONDS)
        quiet = counter.counts["stores"].minus(before)

        assert (quiet.statements, quiet.transactions) == (0, 0)
        assert await other_replica.stop(ALICE.user_id, conversation_id) == (turn_id,)
        async with asyncio.timeout(10):
            await asyncio.gather(running, following)
        logged = list(await stores.events.read(ALICE.user_id, turn_id))
    finally:
        await here.aclose()
        await there.aclose()
        await engine.dispose()
        await counter.close()

    assert [e.type for e in live] == ["turn", "delta", "done"]
    assert live[-1].data["interrupted"] is True
    assert followed == live  # every event, in order, once
    assert logged == live
