"""The checks every JWT verifier makes, in one place so HS256 and JWKS cannot drift apart.

Every ``Unauthenticated`` raised here carries a fixed, short detail: it never echoes the
token, a claim value or key material, because the HTTP layer shows it to the client.
PyJWT's own messages are dropped (``from None``) for the same reason: they can quote
parts of an attacker's token into the logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from chatcore.errors import Unauthenticated
from chatcore.model import MAX_USER_ID_LENGTH, Principal

MAX_TOKEN_BYTES = 8 * 1024
"""Longer tokens are refused before any decoding: no real session token comes close, and
parsing (and, on the JWKS path, a key lookup) should not be spent on junk."""

REQUIRED_CLAIMS = ("exp", "sub")

_ERROR_DETAILS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    # Most specific first: InvalidSignatureError is a DecodeError, for one.
    (jwt.ExpiredSignatureError, "Token has expired"),
    (jwt.ImmatureSignatureError, "Token is not yet valid"),
    (jwt.InvalidIssuerError, "Token issuer is not accepted"),
    (jwt.InvalidAudienceError, "Token audience is not accepted"),
    (jwt.InvalidAlgorithmError, "Token algorithm is not accepted"),
    (jwt.InvalidSignatureError, "Token signature is invalid"),
    (jwt.DecodeError, "Token is malformed"),
)


def check_leeway(leeway_seconds: float) -> float:
    if not math.isfinite(leeway_seconds) or leeway_seconds < 0:
        raise ValueError("leeway_seconds must be a finite number of seconds, at least 0")
    return float(leeway_seconds)


def check_shape(token: str) -> None:
    """Refuse what no verifier should parse: nothing, too much, or non-ASCII."""
    if not isinstance(token, str) or not token:
        raise Unauthenticated("Missing bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("Token is too large")
    if not token.isascii():
        raise Unauthenticated("Token is malformed")


def read_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, unverified: only for choosing how to verify, never for trusting."""
    check_shape(token)
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("Token is malformed") from None


def decode_claims(
    token: str,
    key: jwt.PyJWK | bytes,
    *,
    algorithms: Sequence[str],
    issuer: str | None,
    audience: str | None,
    leeway_seconds: float,
) -> dict[str, Any]:
    """The verified claims: signature, ``exp`` (required), ``nbf``/``iat`` with leeway, and issuer/audience
    only when configured (an unconfigured audience must not reject tokens that carry one)."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            issuer=issuer,
            audience=audience,
            leeway=leeway_seconds,
            options={"require": list(REQUIRED_CLAIMS), "verify_aud": audience is not None},
        )
    except jwt.MissingRequiredClaimError as error:
        raise Unauthenticated(_missing_claim_detail(error.claim)) from None
    except jwt.PyJWTError as error:
        raise Unauthenticated(_detail(error)) from None


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """``sub`` is the user id and must fit the store's column; ``email``/``name`` are kept when they are text."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise Unauthenticated("Token subject is missing")
    if len(subject) > MAX_USER_ID_LENGTH:
        raise Unauthenticated("Token subject is too long")
    return Principal(user_id=subject, email=_text(claims.get("email")), name=_text(claims.get("name")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _missing_claim_detail(claim: str) -> str:
    # The claim name comes from our own required list (or iss/aud), never from the token.
    if claim in {"exp", "sub", "iss", "aud"}:
        return f"Token has no {claim} claim"
    return "Token is missing a required claim"


def _detail(error: jwt.PyJWTError) -> str:
    for error_type, detail in _ERROR_DETAILS:
        if isinstance(error, error_type):
            return detail
    return "Invalid token"
