"""What strangers can try over HTTP: forged tokens, floods, huge bodies, other origins, other users' data.

Apps are built by the composition root on the test PostgreSQL, as in production. The
JWKS-configured apps fetch keys from a real HTTP server on 127.0.0.1 shaped like Better
Auth's; the shared rate limit uses the machine's Redis (``TEST_REDIS_URL``, else
127.0.0.1:6379), under a namespace of each test's own whose keys are deleted afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatcore.entrypoints.http.app import SECURITY_HEADERS
from chatcore.entrypoints.settings import RateLimit
from chatcore.fakes import FunctionAgent, ScriptedAgent
from chatcore.model import AgentRequest, AgentResponse, ToolCall

from ..auth_fixtures import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    Keys,
    SigningKey,
    b64url,
    build_keys,
    claims,
    hand_made,
)
from ..conftest import in_ci
from .conftest import SECRET, AppClient, auth

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HELLO = {"message": "hello"}


def new_user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ok_agent() -> ScriptedAgent:
    return ScriptedAgent([AgentResponse("ok")])


def assert_hardened_headers(response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name)
    assert response.headers.get("x-request-id"), response.status_code


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> Keys:
    return build_keys()


@pytest.fixture(scope="module")
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(*keys.published())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def attacker_server(keys: Keys) -> Iterator[JwksServer]:
    """A key server the attacker controls: the app must never ask it anything."""
    server = JwksServer()
    server.publish(keys.attacker)
    yield server
    server.stop()


@pytest_asyncio.fixture
async def redis_url() -> str:
    """The test Redis: skipped locally when unreachable, but a failure under CI=true, like PostgreSQL."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        message = f"Redis is not available at {REDIS_URL} (set TEST_REDIS_URL): {type(error).__name__}: {error}"
        if in_ci():
            pytest.fail(message + " (CI=true: the Redis tests may not be skipped)", pytrace=False)
        pytest.skip(message)
    finally:
        await client.aclose()
    return REDIS_URL


@pytest_asyncio.fixture
async def redis_namespace(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; only its keys are deleted afterwards."""
    namespace = f"chatcore-test-{uuid.uuid4().hex}"
    yield namespace
    client = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=100)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


# --- rate limits ----------------------------------------------------------------------------------


async def test_the_rate_limit_counts_each_verified_user_separately(app_client: AppClient) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    forged = jwt.encode({"sub": alice, "exp": int(time.time()) + 600}, "not-the-secret-0123456789abcdef-xyz", "HS256")
    async with app_client(agent=ok_agent(), rate_limit=RateLimit(2, "minute")) as client:
        for _ in range(5):  # forged tokens naming alice are refused before they could spend her quota
            refused = await client.post(f"/api/{alice}/chat", json=HELLO, headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401

        first = await client.post(f"/api/{alice}/chat", json=HELLO, headers=auth(alice))
        second = await client.post(f"/api/{alice}/chat", json=HELLO, headers=auth(alice))
        assert (first.status_code, second.status_code) == (200, 200)
        assert first.headers["ratelimit-limit"] == "2"
        assert (first.headers["ratelimit-remaining"], second.headers["ratelimit-remaining"]) == ("1", "0")
        assert first.headers["ratelimit-policy"] == "2; w=60"

        limited = await client.post(f"/api/{alice}/chat", json=HELLO, headers=auth(alice))
        assert limited.status_code == 429
        body = limited.json()
        assert body["status_code"] == 429
        assert "2 per minute" in body["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.headers["ratelimit-remaining"] == "0"
        assert_hardened_headers(limited)

        other = await client.post(f"/api/{bob}/chat", json=HELLO, headers=auth(bob))
        assert other.status_code == 200
        assert other.headers["ratelimit-remaining"] == "1"

        still_401 = await client.post(f"/api/{alice}/chat", json=HELLO)  # authentication still comes first
        assert still_401.status_code == 401


async def test_without_a_rate_limit_there_are_no_rate_limit_headers(app_client: AppClient) -> None:
    user = new_user("free")
    async with app_client(agent=ok_agent()) as client:
        for _ in range(3):
            response = await client.post(f"/api/{user}/chat", json=HELLO, headers=auth(user))
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers


async def test_two_app_instances_share_one_limit_through_redis(
    app_client: AppClient, redis_url: str, redis_namespace: str
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    shared = {"rate_limit": RateLimit(3, "minute"), "redis_url": redis_url, "redis_namespace": redis_namespace}
    async with app_client(agent=ok_agent(), **shared) as one, app_client(agent=ok_agent(), **shared) as two:
        statuses = [
            (await client.post(f"/api/{alice}/chat", json=HELLO, headers=auth(alice))).status_code
            for client in (one, two, one, two, one)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        assert (await two.post(f"/api/{bob}/chat", json=HELLO, headers=auth(bob))).status_code == 200

    client = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        stored = [key.decode() async for key in client.scan_iter(match=f"{redis_namespace}:*")]
    finally:
        await client.aclose()
    assert len(stored) == 2  # one counter per user, in this test's namespace
    assert any(key.endswith(alice) for key in stored)


class Recorder(logging.Handler):
    """Keeps the records of one logger (the app's logging config replaces the root handlers caplog uses)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_unreachable_redis_lets_requests_through_and_says_so(app_client: AppClient) -> None:
    user = new_user("carol")
    recorder = Recorder()
    logger = logging.getLogger("chatcore.http.rate_limit")
    logger.addHandler(recorder)
    down = {"rate_limit": RateLimit(1, "minute"), "redis_url": "redis://127.0.0.1:1/0"}
    try:
        async with app_client(agent=ok_agent(), **down) as client:
            for _ in range(2):
                assert (await client.post(f"/api/{user}/chat", json=HELLO, headers=auth(user))).status_code == 200
    finally:
        logger.removeHandler(recorder)
    failures = [r for r in recorder.records if getattr(r, "event", None) == "rate_limit_store_failed"]
    assert failures
    assert all(r.levelno == logging.WARNING for r in failures)


# --- bodies, origins, headers ---------------------------------------------------------------------


async def test_an_oversized_body_is_413_after_authentication(app_client: AppClient) -> None:
    user = new_user("dave")
    big = {"message": "x" * 3000}
    async with app_client(agent=ok_agent(), max_body_bytes=2048) as client:
        too_big = await client.post(f"/api/{user}/chat", json=big, headers=auth(user))
        assert too_big.status_code == 413
        assert too_big.json() == {"status_code": 413, "detail": "Request body is too large: the limit is 2048 bytes"}
        assert_hardened_headers(too_big)

        anonymous = await client.post(f"/api/{user}/chat", json=big)
        assert anonymous.status_code == 401  # who you are is decided before the body is even looked at

        fits = await client.post(f"/api/{user}/chat", json={"message": "x" * 1500}, headers=auth(user))
        assert fits.status_code == 200


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_cors_is_off_by_default(app_client: AppClient) -> None:
    user = new_user("erin")
    async with app_client(agent=ok_agent()) as client:
        asked = await client.options(f"/api/{user}/chat", headers=preflight("https://app.example.com"))
        assert "access-control-allow-origin" not in asked.headers
        posted = await client.post(
            f"/api/{user}/chat", json=HELLO, headers={**auth(user), "Origin": "https://app.example.com"}
        )
        assert posted.status_code == 200
        assert "access-control-allow-origin" not in posted.headers


async def test_cors_allows_only_the_configured_origins(app_client: AppClient) -> None:
    user = new_user("frank")
    allowed = "https://app.example.com"
    async with app_client(agent=ok_agent(), cors_origins=(allowed,)) as client:
        asked = await client.options(f"/api/{user}/chat", headers=preflight(allowed))
        assert asked.status_code in (200, 204)
        assert asked.headers["access-control-allow-origin"] == allowed
        assert "POST" in asked.headers["access-control-allow-methods"]
        assert "authorization" in asked.headers["access-control-allow-headers"].lower()

        posted = await client.post(f"/api/{user}/chat", json=HELLO, headers={**auth(user), "Origin": allowed})
        assert posted.status_code == 200
        assert posted.headers["access-control-allow-origin"] == allowed
        exposed = posted.headers["access-control-expose-headers"].lower()
        assert "retry-after" in exposed
        assert "x-request-id" in exposed

        refused = await client.options(f"/api/{user}/chat", headers=preflight("https://evil.example.net"))
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example.net"
        foreign = await client.post(
            f"/api/{user}/chat", json=HELLO, headers={**auth(user), "Origin": "https://evil.example.net"}
        )
        assert "access-control-allow-origin" not in foreign.headers


async def test_security_headers_are_on_every_kind_of_response(app_client: AppClient) -> None:
    user = new_user("gina")

    def explode(request: AgentRequest) -> AgentResponse:
        raise RuntimeError("boom")

    async with app_client(agent=ok_agent()) as client:
        ok = await client.post(f"/api/{user}/chat", json=HELLO, headers=auth(user))
        unauthenticated = await client.post(f"/api/{user}/chat", json=HELLO)
        unknown = await client.post(
            f"/api/{user}/chat", json={**HELLO, "conversation_id": str(uuid.uuid4())}, headers=auth(user)
        )
        no_route = await client.get("/no/such/route")
        health = await client.get("/health")
    async with app_client(agent=FunctionAgent(explode)) as client:
        failed = await client.post(f"/api/{user}/chat", json=HELLO, headers=auth(user))
    responses = [ok, unauthenticated, unknown, no_route, health, failed]
    assert [r.status_code for r in responses] == [200, 401, 404, 404, 200, 500]
    for response in responses:
        assert_hardened_headers(response)


# --- users are isolated -------------------------------------------------------------------------


async def test_another_users_conversation_is_the_same_404_as_an_unknown_one(app_client: AppClient) -> None:
    alice, mallory = new_user("alice"), new_user("mallory")
    async with app_client(agent=ok_agent()) as client:
        owned = await client.post(f"/api/{alice}/chat", json=HELLO, headers=auth(alice))
        conversation = owned.json()["conversation_id"]
        foreign = await client.post(
            f"/api/{mallory}/chat", json={**HELLO, "conversation_id": conversation}, headers=auth(mallory)
        )
        unknown = await client.post(
            f"/api/{mallory}/chat", json={**HELLO, "conversation_id": str(uuid.uuid4())}, headers=auth(mallory)
        )
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json() == unknown.json()

        # With her own token on alice's path, mallory is refused before anything is looked up.
        crossed = await client.post(
            f"/api/{alice}/chat", json={**HELLO, "conversation_id": conversation}, headers=auth(mallory)
        )
        assert crossed.status_code == 403
        assert crossed.json()["detail"]

        again = await client.post(
            f"/api/{alice}/chat", json={**HELLO, "conversation_id": conversation}, headers=auth(alice)
        )
        assert again.status_code == 200  # and alice's conversation is untouched by all this


async def test_the_model_cannot_reach_another_users_tasks(app_client: AppClient) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    async with app_client() as client:  # the offline agent, with the real todo tools
        added = await client.post(f"/api/{alice}/chat", json={"message": "Add a task to buy milk"}, headers=auth(alice))
        assert added.status_code == 200
        task_id = added.json()["tool_calls"][0]["result"]["task_id"]

    hijack = ScriptedAgent(
        [
            AgentResponse(
                "",
                tool_calls=(
                    ToolCall("c1", "complete_task", {"task_id": task_id}),
                    ToolCall("c2", "update_task", {"task_id": task_id, "title": "pwned"}),
                    ToolCall("c3", "delete_task", {"task_id": task_id}),
                    ToolCall("c4", "list_tasks", {"status": "all"}),
                ),
            ),
            AgentResponse("I could not find that task."),
        ]
    )
    async with app_client(agent=hijack) as client:
        turn = await client.post(
            f"/api/{bob}/chat", json={"message": f"complete task {task_id} of {alice}"}, headers=auth(bob)
        )
    assert turn.status_code == 200, turn.text
    calls = {call["name"]: call for call in turn.json()["tool_calls"]}
    for name in ("complete_task", "update_task", "delete_task"):
        assert "not found" in calls[name]["error"].lower()
        assert calls[name].get("result") is None
    assert calls["list_tasks"]["result"] == []

    async with app_client() as client:
        listed = await client.post(f"/api/{alice}/chat", json={"message": "Show me all my tasks"}, headers=auth(alice))
    [listing] = listed.json()["tool_calls"]
    assert [(t["id"], t["title"], t["completed"]) for t in listing["result"]] == [(task_id, "Buy milk", False)]


# --- the attack corpus over HTTP ----------------------------------------------------------------


def attack_corpus(keys: Keys, user: str, attacker_url: str) -> dict[str, str]:
    """Name → Authorization header value; every one must be 401 on a JWKS (+ HS256) app."""
    ed = keys.by_alg["EdDSA"]
    now = int(time.time())
    good = ed.sign(claims(sub=user))
    header, payload, signature = good.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    flipped[0] ^= 0x01
    impostor = SigningKey(ed.kid, "EdDSA", keys.attacker.private)
    pem_hmac = hand_made(
        {"alg": "HS256", "typ": "JWT", "kid": keys.by_alg["RS256"].kid},
        claims(sub=user),
        lambda data: hmac.new(keys.rsa_public_pem, data, hashlib.sha256).digest(),
    )
    tokens = {
        "alg none": hand_made({"alg": "none", "typ": "JWT", "kid": ed.kid}, claims(sub=user)),
        "HS256 keyed with the public key": pem_hmac,
        "expired": ed.sign(claims(sub=user, iat=now - 7200, exp=now - 3600)),
        "not yet valid": ed.sign(claims(sub=user, nbf=now + 3600)),
        "issued in the future": ed.sign(claims(sub=user, iat=now + 3600)),
        "wrong issuer": ed.sign(claims(sub=user, iss="http://evil.test")),
        "wrong audience": ed.sign(claims(sub=user, aud="http://evil.test")),
        "no exp": ed.sign(claims(sub=user, exp=None)),
        "tampered payload": f"{header}.{b64url(json.dumps(claims(sub=user, name='admin')).encode())}.{signature}",
        "tampered signature": f"{header}.{payload}.{b64url(bytes(flipped))}",
        "no signature": f"{header}.{payload}.",
        "signed by another key under a known kid": impostor.sign(claims(sub=user)),
        "unknown kid": ed.sign(claims(sub=user), kid=f"unknown-{uuid.uuid4().hex}"),
        "kid with path characters": ed.sign(claims(sub=user), kid="../../../etc/passwd"),
        "jku pointing elsewhere": keys.attacker.sign(claims(sub=user), jku=attacker_url),
        "x5u pointing elsewhere": keys.attacker.sign(claims(sub=user), x5u=attacker_url),
        "embedded jwk": keys.attacker.sign(claims(sub=user), jwk=keys.attacker.jwk()),
        "oversized": ed.sign(claims(sub=user, padding="x" * 9000)),
        "missing sub": ed.sign(claims(sub=None)),
        "HS384 with the shared secret": jwt.encode(claims(sub=user), SECRET + "-" * 16, "HS384"),
        "HS256 with another secret": jwt.encode(claims(sub=user), "another-secret-0123456789abcdef-xyz", "HS256"),
    }
    headers = {name: f"Bearer {token}" for name, token in tokens.items()}
    headers["Basic scheme"] = "Basic " + base64.b64encode(f"{user}:password".encode()).decode()
    headers["Bearer without a token"] = "Bearer "
    headers["token without a scheme"] = good
    return headers


async def test_every_token_of_the_attack_corpus_is_401(
    app_client: AppClient, keys: Keys, jwks_server: JwksServer, attacker_server: JwksServer
) -> None:
    user = new_user("target")
    corpus = attack_corpus(keys, user, attacker_server.url)
    jwks = {"jwks_url": jwks_server.url, "auth_issuer": ISSUER, "auth_audience": AUDIENCE}
    attacker_server.requests.clear()
    async with app_client(agent=ok_agent(), **jwks) as client:
        for alg in ("EdDSA", "ES256", "RS256", "PS256"):  # the app does accept real tokens
            valid = await client.post(
                f"/api/{user}/chat",
                json=HELLO,
                headers={"Authorization": f"Bearer {keys.by_alg[alg].sign(claims(sub=user))}"},
            )
            assert valid.status_code == 200, (alg, valid.text)

        outcomes: dict[str, tuple[int, str]] = {}
        for name, authorization in corpus.items():
            response = await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": authorization})
            outcomes[name] = (response.status_code, response.headers.get("www-authenticate", ""))
    wrong = {
        name: outcome for name, outcome in outcomes.items() if outcome[0] != 401 or not outcome[1].startswith("Bearer")
    }
    assert not wrong, f"not refused with 401 and WWW-Authenticate: Bearer: {wrong}"
    assert attacker_server.hits == 0
    assert set(jwks_server.requests) <= {"/api/auth/jwks"}


async def test_the_corpus_is_also_refused_with_jwks_alone(
    app_client: AppClient, keys: Keys, jwks_server: JwksServer, attacker_server: JwksServer
) -> None:
    user = new_user("target")
    corpus = attack_corpus(keys, user, attacker_server.url)
    # An HS256 token made with the secret a JWKS-only deployment does not have must not get in either.
    corpus["HS256 with a guessable secret"] = f"Bearer {jwt.encode(claims(sub=user), SECRET, 'HS256')}"
    async with app_client(agent=ok_agent(), auth_secret=None, jwks_url=jwks_server.url) as client:
        valid = await client.post(
            f"/api/{user}/chat",
            json=HELLO,
            headers={"Authorization": f"Bearer {keys.by_alg['EdDSA'].sign(claims(sub=user))}"},
        )
        assert valid.status_code == 200
        statuses = {
            name: (await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": value})).status_code
            for name, value in corpus.items()
        }
    # Without a configured issuer/audience, tokens for another issuer or audience are not the app's business.
    expected = {name: 401 for name in corpus} | {"wrong issuer": 200, "wrong audience": 200}
    assert statuses == expected


async def test_an_unreachable_auth_server_is_503_with_retry_after(app_client: AppClient, keys: Keys) -> None:
    user = new_user("henry")
    down = JwksServer()
    down.stop()
    async with app_client(agent=ok_agent(), jwks_url=down.url) as client:
        token = keys.by_alg["EdDSA"].sign(claims(sub=user))
        unavailable = await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": f"Bearer {token}"})
        assert unavailable.status_code == 503
        assert int(unavailable.headers["retry-after"]) >= 1
        assert "keys" in unavailable.json()["detail"]
        assert_hardened_headers(unavailable)
        # HS256 tokens do not depend on the key server.
        assert (await client.post(f"/api/{user}/chat", json=HELLO, headers=auth(user))).status_code == 200


async def test_cached_keys_keep_verifying_while_the_auth_server_is_down(app_client: AppClient, keys: Keys) -> None:
    user = new_user("iris")
    server = JwksServer()
    server.publish(*keys.published())
    try:
        async with app_client(agent=ok_agent(), jwks_url=server.url) as client:
            first = keys.by_alg["ES256"].sign(claims(sub=user))
            assert (
                await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": f"Bearer {first}"})
            ).status_code == 200
            server.stop()
            later = keys.by_alg["RS256"].sign(claims(sub=user))
            assert (
                await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": f"Bearer {later}"})
            ).status_code == 200
    finally:
        server.stop()


async def test_only_the_configured_algorithms_are_accepted(
    app_client: AppClient, keys: Keys, jwks_server: JwksServer
) -> None:
    user = new_user("jane")
    async with app_client(agent=ok_agent(), jwks_url=jwks_server.url, jwt_algorithms=("EdDSA",)) as client:

        async def status(alg: str) -> int:
            token = keys.by_alg[alg].sign(claims(sub=user))
            response = await client.post(f"/api/{user}/chat", json=HELLO, headers={"Authorization": f"Bearer {token}"})
            return response.status_code

        assert [await status(alg) for alg in ("EdDSA", "ES256", "RS256", "PS256")] == [200, 401, 401, 401]
