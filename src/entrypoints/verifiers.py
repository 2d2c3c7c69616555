"""The token verifier the settings name, for the HTTP server and ``chatcore mcp-serve`` alike.

Apart from the container so that ``mcp-serve`` (the ``mcp`` extra) needs neither Litestar nor dependency-injector.
"""

from __future__ import annotations

from chatcore.adapters.auth.composite import AlgorithmRoutingTokenVerifier
from chatcore.adapters.auth.hs256 import Hs256TokenVerifier
from chatcore.adapters.auth.jwks import JwksTokenVerifier
from chatcore.entrypoints.settings import ConfigurationError, Settings
from chatcore.ports import TokenVerifier


def token_verifier(settings: Settings) -> TokenVerifier:
    """HS256 with BETTER_AUTH_SECRET, JWKS with BETTER_AUTH_JWKS_URL, or both routed by each token's algorithm."""
    if not settings.has_token_verifier:
        raise ConfigurationError("Set BETTER_AUTH_SECRET or BETTER_AUTH_JWKS_URL to verify tokens")
    hs256 = (
        Hs256TokenVerifier(
            settings.auth_secret,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_seconds=settings.auth_leeway_seconds,
        )
        if settings.auth_secret
        else None
    )
    jwks = (
        JwksTokenVerifier(
            settings.jwks_url,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithms=settings.jwt_algorithms,
            leeway_seconds=settings.auth_leeway_seconds,
        )
        if settings.jwks_url
        else None
    )
    if hs256 and not jwks:
        return hs256
    return AlgorithmRoutingTokenVerifier(hs256=hs256, jwks=jwks)
