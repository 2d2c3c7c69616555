"""A token exactly as Better Auth's jwt plugin mints it, accepted by an app configured from the environment.

What Better Auth (``better-auth/plugins`` ``jwt()``, defaults) emits, from its source
(``plugins/jwt/sign.ts`` and ``index.ts``):

- header ``{"alg": "EdDSA", "kid": <the key row's id>}``: jose's SignJWT with no ``typ``;
- payload: the session's user object (``id``, ``name``, ``email``, ``emailVerified``,
  ``image``, ``createdAt``, ``updatedAt``) plus ``iat``, ``sub`` (the user id), ``exp``
  (15 minutes), ``iss`` and ``aud`` (both the auth server's base URL);
- ``GET {baseURL}/api/auth/jwks``: ``{"keys": [{"alg": "EdDSA", "crv": "Ed25519", "x": ..., "kty": "OKP",
  "kid": ...}]}``, with no ``use`` member.

The server here publishes exactly that at ``/api/auth/jwks``; its base URL stands for
Better Auth's ``baseURL``.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from dependency_injector import providers
from jwt.algorithms import OKPAlgorithm
from litestar.testing import AsyncTestClient

from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.http.app import create_app
from chatcore.entrypoints.settings import Settings
from chatcore.fakes import FunctionAgent
from chatcore.model import AgentRequest, AgentResponse

from ..auth_fixtures import JwksServer

pytestmark = pytest.mark.integration

ALPHANUMERIC = string.ascii_letters + string.digits


def better_auth_id() -> str:
    """Better Auth's default ids: 32 random alphanumeric characters."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(32))


class BetterAuth:
    """The jwt plugin's key row, JWKS document and token minting, with its default options."""

    def __init__(self, server: JwksServer) -> None:
        self.base_url = server.base_url
        self.kid = better_auth_id()
        self._private = ed25519.Ed25519PrivateKey.generate()
        public = OKPAlgorithm.to_jwk(self._private.public_key(), as_dict=True)  # {"kty": "OKP", "crv", "x"}
        server.keys = [{"alg": "EdDSA", "crv": "Ed25519", **public, "kid": self.kid}]

    def token(self, user: dict[str, object]) -> str:
        now = int(time.time())
        payload = {
            **user,
            "iat": now,
            "sub": user["id"],
            "exp": now + 15 * 60,
            "iss": self.base_url,
            "aud": self.base_url,
        }
        return jwt.encode(payload, self._private, algorithm="EdDSA", headers={"kid": self.kid, "typ": None})


@pytest.fixture
def auth_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture
def better_auth(auth_server: JwksServer) -> BetterAuth:
    return BetterAuth(auth_server)


def a_user() -> dict[str, object]:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": better_auth_id(),
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "emailVerified": True,
        "image": None,
        "createdAt": stamp,
        "updatedAt": stamp,
    }


def env_for(better_auth: BetterAuth, database_url: str) -> dict[str, str]:
    """The backend's environment, as docs/auth.md tells an operator to set it."""
    return {
        "DATABASE_URL": database_url,
        "BETTER_AUTH_JWKS_URL": f"{better_auth.base_url}/api/auth/jwks",
        "BETTER_AUTH_ISSUER": better_auth.base_url,
        "BETTER_AUTH_AUDIENCE": better_auth.base_url,
    }


@asynccontextmanager
async def open_app(env: dict[str, str], agent: FunctionAgent) -> AsyncIterator[AsyncTestClient[object]]:
    container = build_container(Settings.from_env(env))
    container.agent.override(providers.Object(agent))
    async with AsyncTestClient(app=create_app(container)) as client:
        yield client


async def test_a_better_auth_token_is_accepted_and_its_email_reaches_the_model(
    better_auth: BetterAuth, auth_server: JwksServer, postgres_url: str
) -> None:
    user = a_user()
    token = better_auth.token(user)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": better_auth.kid}

    agent = FunctionAgent(lambda request: AgentResponse("Hello Ada!"))
    async with open_app(env_for(better_auth, postgres_url), agent) as client:
        response = await client.post(
            f"/api/{user['id']}/chat", json={"message": "Hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["response"] == "Hello Ada!"

        other_user = a_user()
        crossed = await client.post(
            f"/api/{other_user['id']}/chat", json={"message": "Hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert crossed.status_code == 403

    [request] = agent.requests
    assert isinstance(request, AgentRequest)
    assert "ada@example.com" in request.system_prompt
    assert auth_server.requests == ["/api/auth/jwks"]  # fetched once, then cached


async def test_a_token_of_another_better_auth_deployment_is_refused(better_auth: BetterAuth, postgres_url: str) -> None:
    elsewhere = JwksServer()
    try:
        other_deployment = BetterAuth(elsewhere)
        other_deployment.kid = better_auth.kid  # even under a kid this deployment knows
        user = a_user()
        agent = FunctionAgent(lambda request: AgentResponse("never"))
        async with open_app(env_for(better_auth, postgres_url), agent) as client:
            response = await client.post(
                f"/api/{user['id']}/chat",
                json={"message": "Hi"},
                headers={"Authorization": f"Bearer {other_deployment.token(user)}"},
            )
        assert response.status_code == 401
        assert not agent.requests
    finally:
        elsewhere.stop()
