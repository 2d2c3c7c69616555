"""One TokenVerifier for deployments that accept both HS256 (shared secret) and Better Auth JWKS tokens."""

from __future__ import annotations

from chatcore.adapters.auth._checks import read_header
from chatcore.adapters.auth.hs256 import ALGORITHM as HS256
from chatcore.adapters.auth.hs256 import Hs256TokenVerifier
from chatcore.adapters.auth.jwks import JwksTokenVerifier
from chatcore.errors import Unauthenticated
from chatcore.model import Principal


class AlgorithmRoutingTokenVerifier:
    """Sends each token to the verifier its header's ``alg`` belongs to.

    HS256 goes to ``hs256``, the JWKS verifier's configured asymmetric algorithms go to
    ``jwks``; anything else (``none``, HS384, an algorithm nobody configured) is
    Unauthenticated here. The header is only read to choose: the chosen verifier checks
    the token in full, with its own fixed algorithm list, so a forged ``alg`` can at worst
    pick the verifier that then refuses it.
    """

    def __init__(self, *, hs256: Hs256TokenVerifier | None, jwks: JwksTokenVerifier | None) -> None:
        if hs256 is None and jwks is None:
            raise ValueError("AlgorithmRoutingTokenVerifier needs an HS256 or a JWKS verifier (or both)")
        self.hs256 = hs256
        self.jwks = jwks

    def __repr__(self) -> str:
        return f"AlgorithmRoutingTokenVerifier(hs256={self.hs256!r}, jwks={self.jwks!r})"

    async def verify(self, token: str) -> Principal:
        algorithm = read_header(token).get("alg")
        if algorithm == HS256 and self.hs256 is not None:
            return await self.hs256.verify(token)
        if self.jwks is not None and algorithm in self.jwks.algorithms:
            return await self.jwks.verify(token)
        raise Unauthenticated("Token algorithm is not accepted")
