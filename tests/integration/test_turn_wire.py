"""On the wire, a turn without tools is its two statements: no BEGIN, COMMIT or pool ping around them (issue 7).

``test_round_trips`` bounds the statements a turn sends; this pins what asyncpg sends besides them.
Both of a turn's writes are single atomic statements run in autocommit, and a pooled connection in
steady use is not pinged, so the 12 round trips a turn used to make (10 of them driver queries) are 2,
both sent by the store on asyncpg directly (``asyncpg_statements.py``).
"""

from __future__ import annotations

import uuid

import pytest

from chatcore.model import AgentResponse

from .conftest import auth
from .observed_app import engine_of, observed_app
from .test_round_trips import PoolWatchingAgent, counting, log_driver_queries

pytestmark = pytest.mark.integration


async def test_a_turn_without_tools_sends_its_statements_and_nothing_else(postgres_url: str) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    agent = PoolWatchingAgent(AgentResponse("Hello!"))
    async with observed_app(postgres_url, agent) as (client, container):
        agent.engine = await engine_of(container)
        driver_queries = await log_driver_queries(agent.engine)
        first = await client.post(f"/api/{user}/chat", json={"message": "Hi"}, headers=auth(user))
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]

        async with counting(agent.engine, driver_queries) as new:
            created = await client.post(f"/api/{user}/chat", json={"message": "A new one"}, headers=auth(user))
        async with counting(agent.engine, driver_queries) as continued:
            payload = {"message": "Go on", "conversation_id": conversation}
            answered = await client.post(f"/api/{user}/chat", json=payload, headers=auth(user))

    assert (created.status_code, answered.status_code) == (200, 200)
    for counts in (new, continued):
        assert len(counts.round_trips) == 2, counts.describe()
        assert all(query.lstrip().upper().startswith("WITH ") for query in counts.driver_queries), counts.describe()
        assert counts.statements == [], "the turn's statements run on asyncpg, past SQLAlchemy's execution layer"
