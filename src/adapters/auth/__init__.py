"""Token verifiers: HS256 shared secret and Better Auth JWKS."""

from chatcore.adapters.auth.composite import AlgorithmRoutingTokenVerifier
from chatcore.adapters.auth.hs256 import Hs256TokenVerifier, mint_hs256_token
from chatcore.adapters.auth.jwks import JwksTokenVerifier

__all__ = ["AlgorithmRoutingTokenVerifier", "Hs256TokenVerifier", "JwksTokenVerifier", "mint_hs256_token"]
