"""The soak's short form (``bench/soak.py``; ``make soak`` runs the long one): two ``chatcore serve`` replicas on
PostgreSQL under streamed and JSON turns with tool calls, keyed retries and ``if_busy`` requests, one replica
SIGKILLed and restarted twice and the database cut once; then nothing is lost, duplicated or left running, and
``chatcore gc`` leaves only the events of turns newer than its retention. The soak's own checks are the asserts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from bench.soak import SoakPlan, soak, summary
from sqlalchemy.engine import URL

from chatcore.adapters.sqlalchemy.migrate import run_migrations_async

from ..conftest import fresh_database

pytestmark = pytest.mark.integration

SHORT = SoakPlan(
    seconds=16, users=4, kill_every=5, kills=2, cut_at=0.4, cut_seconds=2, latency_ms=200, attempt_seconds=20
)
"""Two kills (at 5 s and 10 s, or when the first restart is done: one of each replica) and the cut at 6.4 s."""


@pytest_asyncio.fixture(loop_scope="session")
async def database(postgres_server: URL) -> AsyncIterator[str]:
    """A database of the soak's own: ``chatcore gc`` deletes across users."""
    async with fresh_database(postgres_server) as url:
        await run_migrations_async(url)
        yield url


async def test_a_short_soak_loses_duplicates_and_leaves_nothing_behind(database: str, tmp_path: Path) -> None:
    figures = await soak(database, SHORT, tmp_path)

    print(summary(figures))  # the counts, in the test's output (pytest -s, or on failure)
    assert figures["kills"] == 2
    assert figures["restarts"] == 2
    assert figures["database_cuts"] == 1
    assert figures["conversations_continued"] == SHORT.users
    assert figures["outcomes"].get("gave_up", 0) == 0
    assert figures["requests"]["streamed"] > 0
    assert figures["requests"]["json"] > 0
    assert figures["tool_calls"] >= figures["outcomes"].get("complete", 0)
