"""The rate-limit middleware on a small app of fakes: keyed by verified user, opt-out per handler, store outages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Litestar, Router, get
from litestar.stores.memory import MemoryStore
from litestar.testing import AsyncTestClient

from chatcore.entrypoints.http.auth import BearerAuthenticationMiddleware
from chatcore.entrypoints.http.errors import EXCEPTION_HANDLERS
from chatcore.entrypoints.http.rate_limit import RATE_LIMIT_STORE, SKIP_RATE_LIMIT, rate_limit_config
from chatcore.entrypoints.settings import RateLimit
from chatcore.fakes import InMemoryConversationStore, InMemoryToolRegistry, ScriptedAgent, StaticTokenVerifier
from chatcore.model import AgentResponse
from chatcore.service import ChatService
from tests.stores import claims_of


@get("/api/{user_id:str}/counted")
async def counted() -> str:
    return "ok"


@get("/api/{user_id:str}/polled", opt={SKIP_RATE_LIMIT: True})
async def polled() -> str:
    return "ok"


class BrokenStore(MemoryStore):
    """A store whose server is gone: every call fails like a refused Redis connection."""

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        raise ConnectionRefusedError("store down")

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        raise ConnectionRefusedError("store down")


def build(verifier: StaticTokenVerifier, store: MemoryStore, limit: RateLimit) -> Litestar:
    api = Router(
        path="/",
        route_handlers=[counted, polled],
        middleware=[BearerAuthenticationMiddleware, rate_limit_config(limit).middleware],
    )
    app = Litestar(
        route_handlers=[api],
        stores={RATE_LIMIT_STORE: store},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    conversations = InMemoryConversationStore()
    app.state.service = ChatService(
        store=conversations,
        claims=claims_of(conversations),
        agent=ScriptedAgent([AgentResponse("unused")]),
        verifier=verifier,
        tools=InMemoryToolRegistry(),
    )
    return app


def bearer(token: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_limit_is_per_verified_user_and_a_handler_may_opt_out() -> None:
    verifier = StaticTokenVerifier()
    alice, bob = verifier.issue("alice"), verifier.issue("bob")
    async with AsyncTestClient(app=build(verifier, MemoryStore(), RateLimit(2, "hour"))) as client:
        statuses = [(await client.get("/api/alice/counted", headers=bearer(alice))).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        for _ in range(5):
            polled_response = await client.get("/api/alice/polled", headers=bearer(alice))
            assert polled_response.status_code == 200
            assert "ratelimit-limit" not in polled_response.headers
        assert (await client.get("/api/bob/counted", headers=bearer(bob))).status_code == 200
        assert (await client.get("/api/alice/polled")).status_code == 401  # opting out of the limit is not of auth

        limited = await client.get("/api/alice/counted", headers=bearer(alice))
        assert limited.status_code == 429
        assert limited.json()["detail"].startswith("Too many requests: the limit is 2 per hour")
        assert 3000 < int(limited.headers["retry-after"]) <= 3600


async def test_a_failing_store_lets_requests_through() -> None:
    verifier = StaticTokenVerifier()
    alice = verifier.issue("alice")
    async with AsyncTestClient(app=build(verifier, BrokenStore(), RateLimit(1, "minute"))) as client:
        for _ in range(3):
            assert (await client.get("/api/alice/counted", headers=bearer(alice))).status_code == 200
