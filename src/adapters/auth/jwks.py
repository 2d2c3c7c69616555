"""Tokens signed by Better Auth's JWT plugin, verified with the public keys it publishes at ``/api/auth/jwks``."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import jwt
from jwt.algorithms import get_default_algorithms

from chatcore.adapters.auth._checks import check_leeway, decode_claims, principal_from_claims, read_header
from chatcore.errors import AuthUnavailable, Unauthenticated
from chatcore.model import Principal

logger = logging.getLogger("chatcore.auth.jwks")

DEFAULT_ALGORITHMS = ("EdDSA", "ES256", "RS256", "PS256")


def asymmetric_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    """The configured algorithms this path may use: ``none`` and every HS* are dropped even when listed,
    because a public key must never be usable as a MAC secret (key-confusion)."""
    supported = get_default_algorithms()
    allowed: list[str] = []
    for name in algorithms:
        if name.lower() == "none" or name.upper().startswith("HS"):
            continue
        if name not in supported:
            raise ValueError(f"unsupported JWT algorithm: {name!r}")
        if name not in allowed:
            allowed.append(name)
    if not allowed:
        raise ValueError("the JWKS verifier needs at least one asymmetric algorithm (e.g. EdDSA, ES256, RS256)")
    return tuple(allowed)


class JwksTokenVerifier:
    """A TokenVerifier for Better Auth JWTs, checked against the key set at ``jwks_url``.

    Better Auth signs with EdDSA (Ed25519) by default, and by default sets both ``iss`` and
    ``aud`` to its base URL (e.g. ``https://app.example.com``): pass that as ``issuer`` and
    ``audience`` to have them checked (each is checked only when given).

    What the token may choose, and what it may not:

    - The algorithm comes from ``algorithms`` (asymmetric only; ``none`` and HS* are
      dropped) and must match the key: a key without an ``alg`` member is bound to the
      algorithm PyJWT infers from its type (RS256 for RSA).
    - Only the configured URL is ever fetched. ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers
      are ignored; ``kid`` is required and is only ever compared with the set's key ids.
    - An unknown ``kid`` refreshes the set once (key rotation), but at most one fetch is
      attempted per ``min_refresh_interval_seconds``, so a flood of made-up kids cannot
      hammer the auth server: inside the interval an unknown kid is simply Unauthenticated.

    Keys are cached by PyJWT's ``PyJWKClient`` for ``cache_ttl_seconds``. A token whose key
    is cached verifies in the event loop, with no thread and no network; the synchronous
    client runs in a worker thread only when a fetch may happen. When the auth server is
    unreachable (or serves something that is not a key set), keys from the last good
    fetch keep verifying and every other token is AuthUnavailable, never Unauthenticated:
    it is not the client's fault.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_seconds: float = 30.0,
        cache_ttl_seconds: float = 300.0,
        min_refresh_interval_seconds: float = 30.0,
        fetch_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) paces refreshes; tests pass a fake one to step past the interval."""
        if not _positive(cache_ttl_seconds) or not _positive(fetch_timeout_seconds):
            raise ValueError("cache_ttl_seconds and fetch_timeout_seconds must be positive")
        if not math.isfinite(min_refresh_interval_seconds) or min_refresh_interval_seconds < 0:
            raise ValueError("min_refresh_interval_seconds must be at least 0")
        try:
            self._client = jwt.PyJWKClient(
                jwks_url,
                cache_jwk_set=True,
                lifespan=cache_ttl_seconds,
                timeout=fetch_timeout_seconds,
                # Refreshes are paced here, where failed fetches count too; the client's own
                # cooldown only covers get_signing_key, which this class does not use.
                cooldown_duration=0,
                headers={"Accept": "application/json", "User-Agent": "chatcore-jwks"},
            )
        except jwt.PyJWKClientError as error:
            raise ValueError(f"jwks_url must be an http(s) URL: {error}") from None
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = asymmetric_algorithms(algorithms)
        self.leeway_seconds = check_leeway(leeway_seconds)
        self.min_refresh_interval_seconds = float(min_refresh_interval_seconds)
        self._clock = clock
        self._last_attempt: float | None = None
        self._last_fetch_failed = False
        self._fetch_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"JwksTokenVerifier({self.jwks_url!r}, issuer={self.issuer!r}, audience={self.audience!r})"

    async def verify(self, token: str) -> Principal:
        header = read_header(token)
        if header.get("alg") not in self.algorithms:
            raise Unauthenticated("Token algorithm is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("Token has no key id")
        key = self._cached_key(kid, fresh_only=True)
        if key is None:
            key = await self._fetched_key(kid)
        claims = decode_claims(
            token,
            key,
            algorithms=self.algorithms,
            issuer=self.issuer,
            audience=self.audience,
            leeway_seconds=self.leeway_seconds,
        )
        return principal_from_claims(claims)

    def _cached_key(self, kid: str, *, fresh_only: bool) -> jwt.PyJWK | None:
        """The key for ``kid`` from the client's cache, without I/O; stale entries only when asked."""
        cache = self._client.jwk_set_cache
        if cache is None or cache.jwk_set_with_timestamp is None:
            return None
        jwk_set = cache.get() if fresh_only else cache.jwk_set_with_timestamp.get_jwk_set()
        if jwk_set is None:
            return None
        for key in jwk_set.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    def _cache_is_fresh(self) -> bool:
        cache = self._client.jwk_set_cache
        return cache is not None and cache.get() is not None

    async def _fetched_key(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid`` after at most one (paced) fetch; stale keys cover an unreachable server."""
        stale = self._cached_key(kid, fresh_only=False)
        if stale is not None and self._fetch_lock.locked():
            return stale  # the set expired and another request is already refetching it: don't queue
        async with self._fetch_lock:
            # Another request may have fetched while this one waited.
            key = self._cached_key(kid, fresh_only=True)
            if key is not None:
                return key
            if self._may_fetch():
                await self._fetch()
                key = self._cached_key(kid, fresh_only=True)
                if key is not None:
                    return key
            key = self._cached_key(kid, fresh_only=False)
            if key is not None:
                return key
            if self._last_fetch_failed or not self._cache_is_fresh():
                raise AuthUnavailable(
                    "Cannot fetch the keys to verify this token; try again shortly",
                    retry_after=self._seconds_until_next_fetch(),
                )
            raise Unauthenticated("Token signing key is not known")

    def _may_fetch(self) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= self.min_refresh_interval_seconds

    def _seconds_until_next_fetch(self) -> int:
        if self._last_attempt is None:
            return 1
        remaining = self._last_attempt + self.min_refresh_interval_seconds - self._clock()
        return max(1, math.ceil(remaining))

    async def _fetch(self) -> None:
        """Refresh the client's cached set. A failure keeps the last good set (PyJWKClient only caches successes)."""
        self._last_attempt = self._clock()
        try:
            jwk_set = await asyncio.to_thread(self._client.get_jwk_set, True)
        except (jwt.PyJWTError, ValueError, OSError) as error:
            # ValueError: a body that is not JSON; OSError: a connection dropped mid-read.
            self._last_fetch_failed = True
            logger.warning(
                "JWKS fetch failed: %s",
                type(error).__name__,
                extra={"event": "jwks_fetch_failed", "jwks_url": self.jwks_url, "error": type(error).__name__},
            )
            return
        usable = [key for key in jwk_set.keys if key.key_id and key.public_key_use in ("sig", None)]
        self._last_fetch_failed = not usable
        if not usable:
            logger.warning(
                "JWKS has no signing keys with a kid",
                extra={"event": "jwks_fetch_failed", "jwks_url": self.jwks_url, "error": "no signing keys"},
            )
        else:
            logger.info(
                "JWKS refreshed",
                extra={"event": "jwks_refreshed", "jwks_url": self.jwks_url, "keys": len(usable)},
            )


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
