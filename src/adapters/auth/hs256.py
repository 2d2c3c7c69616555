"""HS256 tokens signed with a shared secret (``BETTER_AUTH_SECRET``), and minting them for the CLI and tests."""

from __future__ import annotations

import base64
import time

import jwt

from chatcore.adapters.auth._checks import check_leeway, check_shape, decode_claims, principal_from_claims
from chatcore.model import MAX_USER_ID_LENGTH, Principal

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits). A shorter
secret is brute-forceable offline from any one token, so it is refused at start-up."""


def _secret_key(secret: str) -> bytes:
    if not isinstance(secret, str):
        raise TypeError("secret must be a string")
    key = secret.encode("utf-8")
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the HS256 secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


class Hs256TokenVerifier:
    """A TokenVerifier for tokens signed with one shared HS256 secret.

    The algorithm is fixed to HS256 whatever the token's header says, so ``alg: none``
    and asymmetric-key confusion are refused by construction. ``exp`` and ``sub`` are
    required; ``nbf``/``iat`` are checked with ``leeway_seconds`` of clock skew; issuer
    and audience are checked only when configured.
    """

    def __init__(
        self,
        secret: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 30.0,
    ) -> None:
        # Prepared once: given raw bytes, PyJWT would check and wrap the key again on every decode.
        self._key = jwt.PyJWK(
            {"kty": "oct", "k": base64.urlsafe_b64encode(_secret_key(secret)).rstrip(b"=").decode()}, ALGORITHM
        )
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = check_leeway(leeway_seconds)

    def __repr__(self) -> str:
        return f"Hs256TokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    async def verify(self, token: str) -> Principal:
        check_shape(token)  # decode_claims reads the header itself and refuses any alg but HS256
        claims = decode_claims(
            token,
            self._key,
            algorithms=(ALGORITHM,),
            issuer=self.issuer,
            audience=self.audience,
            leeway_seconds=self.leeway_seconds,
        )
        return principal_from_claims(claims)


def mint_hs256_token(
    secret: str,
    *,
    user_id: str,
    email: str | None = None,
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A token ``Hs256TokenVerifier(secret, issuer=issuer, audience=audience)`` accepts, for ``chatcore token``."""
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise ValueError(f"user_id must be 1 to {MAX_USER_ID_LENGTH} characters")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if email is not None:
        claims["email"] = email
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, _secret_key(secret), algorithm=ALGORITHM)
