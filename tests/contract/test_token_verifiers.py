"""Every TokenVerifier against the same contract, and the JWT ones against an attack corpus.

The JWKS verifier talks to a real HTTP server on 127.0.0.1 (``tests/auth_fixtures.py``) that
serves keys made there, counts its requests, rotates keys, serves garbage and goes down on demand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcore.adapters.auth import (
    AlgorithmRoutingTokenVerifier,
    Hs256TokenVerifier,
    JwksTokenVerifier,
    mint_hs256_token,
)
from chatcore.errors import AuthUnavailable, Unauthenticated
from chatcore.fakes import StaticTokenVerifier
from chatcore.model import Principal
from chatcore.ports import TokenVerifier

from ..auth_fixtures import (
    ASYMMETRIC,
    AUDIENCE,
    ISSUER,
    JWKS_PATH,
    JwksServer,
    Keys,
    SigningKey,
    b64url,
    build_keys,
    claims,
    hand_made,
    new_ed25519,
)

SECRET = "contract-test-secret-0123456789abcdef"


# --- keys and tokens ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> Keys:
    return build_keys()


def hs256_sign(claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256", headers=headers or None)


# --- the JWKS server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server: JwksServer, keys: Keys) -> JwksServer:
    """The module's server, publishing every test key, with its request log emptied."""
    shared_server.reset(*keys.published())
    return shared_server


@pytest.fixture(scope="module")
def attacker_server() -> Iterator[JwksServer]:
    """A second server, standing for one the attacker controls; tests reset it and count its requests."""
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[[], JwksServer]]:
    """Servers of a test's own, for tests that take them down."""
    made: list[JwksServer] = []

    def make() -> JwksServer:
        made.append(JwksServer())
        return made[-1]

    yield make
    for server in made:
        server.stop()


class FakeClock:
    """Monotonic seconds for the refresh pacing; tests step it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def jwks_verifier(url: str, **options: Any) -> JwksTokenVerifier:
    return JwksTokenVerifier(url, issuer=ISSUER, audience=AUDIENCE, **options)


def hs256_verifier(**options: Any) -> Hs256TokenVerifier:
    return Hs256TokenVerifier(SECRET, issuer=ISSUER, audience=AUDIENCE, **options)


# --- schemes: one verifier and the way to make tokens it should accept -----------------------


@dataclass
class Scheme:
    name: str
    verifier: TokenVerifier
    issue: Callable[[str, str | None], str]
    sign: Callable[..., str] | None = None
    """Signs claims (and extra headers) with the key the verifier trusts; JWT schemes only."""
    key: SigningKey | None = None
    """The JWKS key behind ``sign``; None for HS256."""


def build_scheme(name: str, server: JwksServer, keys: Keys) -> Scheme:
    if name == "static":
        static = StaticTokenVerifier()
        return Scheme(name, static, static.issue)
    kind, _, alg = name.partition("-")
    hs256 = hs256_verifier()
    jwks = jwks_verifier(server.url)
    verifiers: dict[str, TokenVerifier] = {
        "hs256": hs256,
        "jwks": jwks,
        "routing": AlgorithmRoutingTokenVerifier(hs256=hs256, jwks=jwks),
    }
    verifier = verifiers[kind]
    key = None if kind == "hs256" or alg == "HS256" else keys.by_alg[alg]
    sign = hs256_sign if key is None else key.sign
    return Scheme(name, verifier, lambda user_id, email: sign(claims(sub=user_id, email=email)), sign, key)


# The routing verifier delegates, so three of its algorithms (one per route and key family) are enough.
JWT_SCHEMES = ["hs256", *(f"jwks-{a}" for a in ASYMMETRIC), "routing-HS256", "routing-EdDSA", "routing-PS256"]
KEYED_SCHEMES = [name for name in JWT_SCHEMES if name.split("-")[1:] != ["HS256"] and name != "hs256"]


@pytest.fixture(params=["static", *JWT_SCHEMES])
def scheme(request: pytest.FixtureRequest, server: JwksServer, keys: Keys) -> Scheme:
    return build_scheme(request.param, server, keys)


@pytest.fixture(params=JWT_SCHEMES)
def jwt_scheme(request: pytest.FixtureRequest, server: JwksServer, keys: Keys) -> Scheme:
    return build_scheme(request.param, server, keys)


@pytest.fixture(params=KEYED_SCHEMES)
def keyed_scheme(request: pytest.FixtureRequest, server: JwksServer, keys: Keys) -> Scheme:
    return build_scheme(request.param, server, keys)


def signer_of(scheme: Scheme) -> Callable[..., str]:
    assert scheme.sign is not None
    return scheme.sign


async def refused(verifier: TokenVerifier, token: str) -> str:
    """Assert Unauthenticated with a short detail that quotes neither the token nor any key; return it."""
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    detail = caught.value.detail
    assert 0 < len(detail) <= 60
    assert all(part not in detail for part in token.split(".") if len(part) >= 8)
    assert SECRET not in detail
    assert "BEGIN" not in detail
    assert "user-1" not in detail
    return detail


# --- the shared contract --------------------------------------------------------------------


async def test_a_valid_token_speaks_for_its_subject(scheme: Scheme) -> None:
    principal = await scheme.verifier.verify(scheme.issue("user-42", "u42@example.com"))
    assert principal.user_id == "user-42"
    assert principal.email == "u42@example.com"


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "a.b", "...", "Bearer x.y.z", "é.é.é"])
async def test_missing_and_malformed_tokens_are_unauthenticated(scheme: Scheme, token: str) -> None:
    await refused(scheme.verifier, token)


async def test_claims_become_the_principal(jwt_scheme: Scheme) -> None:
    sign = signer_of(jwt_scheme)
    principal = await jwt_scheme.verifier.verify(sign(claims(sub="abc", email="a@b.c", name="Ann")))
    assert principal == Principal(user_id="abc", email="a@b.c", name="Ann")
    bare = await jwt_scheme.verifier.verify(sign(claims(sub="abc", email=None, name=None)))
    assert bare == Principal(user_id="abc")
    odd = await jwt_scheme.verifier.verify(sign(claims(email=["x"], name=7)))
    assert (odd.email, odd.name) == (None, None)


async def test_clock_skew_within_the_leeway_is_tolerated(jwt_scheme: Scheme) -> None:
    now = int(time.time())
    sign = signer_of(jwt_scheme)
    await jwt_scheme.verifier.verify(sign(claims(exp=now - 10)))
    await jwt_scheme.verifier.verify(sign(claims(nbf=now + 10, iat=now + 10)))


# --- the attack corpus: every JWT verifier ----------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(jwt_scheme: Scheme, alg: str) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": jwt_scheme.key.kid if jwt_scheme.key else "x"}
    await refused(jwt_scheme.verifier, hand_made(header, claims()))


async def test_hs256_keyed_with_the_rsa_public_key_is_refused(jwt_scheme: Scheme, keys: Keys) -> None:
    """Key confusion: the public PEM (which anyone can fetch) used as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": keys.by_alg["RS256"].kid}
    token = hand_made(header, claims(), lambda data: hmac.new(keys.rsa_public_pem, data, hashlib.sha256).digest())
    await refused(jwt_scheme.verifier, token)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_other_hmac_algorithms_with_the_shared_secret_are_refused(jwt_scheme: Scheme) -> None:
    for alg in ("HS384", "HS512"):
        await refused(jwt_scheme.verifier, jwt.encode(claims(), SECRET, algorithm=alg, headers={"kid": "ed-1"}))


async def test_expired_token_is_refused(jwt_scheme: Scheme) -> None:
    now = int(time.time())
    detail = await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(claims(iat=now - 7200, exp=now - 3600)))
    assert "expired" in detail


async def test_token_without_exp_is_refused(jwt_scheme: Scheme) -> None:
    detail = await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(claims(exp=None)))
    assert "exp" in detail


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_from_the_future_is_refused(jwt_scheme: Scheme, claim: str) -> None:
    future = int(time.time()) + 3600
    detail = await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(claims(**{claim: future})))
    assert "not yet valid" in detail


@pytest.mark.parametrize("issuer", ["http://evil.test", "http://auth.test/", None])
async def test_wrong_or_missing_issuer_is_refused(jwt_scheme: Scheme, issuer: str | None) -> None:
    await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(claims(iss=issuer)))


@pytest.mark.parametrize("audience", ["http://evil.test", ["http://evil.test"], None])
async def test_wrong_or_missing_audience_is_refused(jwt_scheme: Scheme, audience: Any) -> None:
    await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(claims(aud=audience)))


async def test_tampered_payload_is_refused(jwt_scheme: Scheme) -> None:
    header, _, signature = signer_of(jwt_scheme)(claims()).split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    detail = await refused(jwt_scheme.verifier, f"{header}.{forged}.{signature}")
    assert "signature" in detail


async def test_tampered_signature_is_refused(jwt_scheme: Scheme) -> None:
    header, payload, signature = signer_of(jwt_scheme)(claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    await refused(jwt_scheme.verifier, f"{header}.{payload}.{b64url(bytes(raw))}")
    await refused(jwt_scheme.verifier, f"{header}.{payload}.")


async def test_token_signed_with_another_key_is_refused(jwt_scheme: Scheme, keys: Keys) -> None:
    if jwt_scheme.key is None:
        token = jwt.encode(claims(), "another-secret-0123456789abcdef-xyz", algorithm="HS256")
    else:
        impostor = SigningKey(jwt_scheme.key.kid, "EdDSA", keys.attacker.private)
        token = impostor.sign(claims())
    await refused(jwt_scheme.verifier, token)


async def test_oversized_token_is_refused_before_decoding(jwt_scheme: Scheme, server: JwksServer) -> None:
    token = signer_of(jwt_scheme)(claims(padding="x" * 9000), kid=f"unknown-{uuid.uuid4()}")
    assert len(token) > 8 * 1024
    assert await refused(jwt_scheme.verifier, token) == "Token is too large"
    assert server.hits == 0


@pytest.mark.parametrize(
    ("sub", "reason"),
    [(None, "missing sub"), ("", "empty sub"), ("   ", "blank sub"), ("x" * 256, "sub over 255"), (42, "not text")],
)
async def test_bad_subject_is_refused(jwt_scheme: Scheme, sub: Any, reason: str) -> None:
    payload = claims()
    payload.pop("sub")
    if sub is not None:
        payload["sub"] = sub
    await refused(jwt_scheme.verifier, signer_of(jwt_scheme)(payload))


async def test_longest_allowed_subject_is_accepted(jwt_scheme: Scheme) -> None:
    principal = await jwt_scheme.verifier.verify(signer_of(jwt_scheme)(claims(sub="x" * 255)))
    assert principal.user_id == "x" * 255


# --- the attack corpus: the JWKS path ---------------------------------------------------------


@pytest.mark.parametrize("kid", ["unknown-kid", "../../x", "..%2F..%2Fx", "/etc/passwd", "ed-1/../rsa-1", "?kid=ed-1"])
async def test_unknown_or_path_like_kid_is_just_unknown(keyed_scheme: Scheme, server: JwksServer, kid: str) -> None:
    assert keyed_scheme.key is not None
    await refused(keyed_scheme.verifier, keyed_scheme.key.sign(claims(), kid=kid))
    assert set(server.requests) <= {JWKS_PATH}


@pytest.mark.parametrize("kid", [None, "", 123, ["ed-1"]])
async def test_missing_or_non_text_kid_is_refused(keyed_scheme: Scheme, server: JwksServer, kid: Any) -> None:
    assert keyed_scheme.key is not None
    header = {"alg": keyed_scheme.key.alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    payload = b64url(json.dumps(claims()).encode())
    head = b64url(json.dumps(header).encode())
    signature = jwt.get_algorithm_by_name(keyed_scheme.key.alg).sign(
        f"{head}.{payload}".encode(), keyed_scheme.key.private
    )
    await refused(keyed_scheme.verifier, f"{head}.{payload}.{b64url(signature)}")
    assert server.hits == 0


@pytest.mark.parametrize("header", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", "legit"])
async def test_key_url_headers_are_never_fetched(
    keyed_scheme: Scheme, keys: Keys, attacker_server: JwksServer, header: str, kid: str
) -> None:
    assert keyed_scheme.key is not None
    evil = attacker_server
    impostor = SigningKey(keyed_scheme.key.kid if kid == "legit" else "attacker", "EdDSA", keys.attacker.private)
    evil.reset(impostor)
    await refused(keyed_scheme.verifier, impostor.sign(claims(), **{header: evil.url}))
    assert evil.hits == 0


@pytest.mark.parametrize("kid", ["attacker", "legit"])
async def test_embedded_keys_in_the_header_are_ignored(keyed_scheme: Scheme, keys: Keys, kid: str) -> None:
    assert keyed_scheme.key is not None
    impostor = SigningKey(keyed_scheme.key.kid if kid == "legit" else "attacker", "EdDSA", keys.attacker.private)
    await refused(keyed_scheme.verifier, impostor.sign(claims(), jwk=keys.attacker.jwk()))
    await refused(
        keyed_scheme.verifier, impostor.sign(claims(), x5c=[base64.b64encode(keys.attacker_cert_der).decode()])
    )


async def test_algorithm_must_match_the_key(server: JwksServer, keys: Keys) -> None:
    """An ES256 token naming the Ed25519 key's kid, and a PS256 token naming the RS256 key's kid."""
    verifier = jwks_verifier(server.url)
    mismatched = [
        SigningKey("ed-1", "ES256", keys.by_alg["ES256"].private),
        SigningKey("rsa-1", "PS256", keys.by_alg["PS256"].private),
    ]
    for key in mismatched:
        assert await refused(verifier, key.sign(claims())) == "Token algorithm is not accepted"


async def test_hmac_key_in_the_key_set_is_never_used(server: JwksServer, keys: Keys) -> None:
    """Even listed in ``algorithms``, HS* and ``none`` are dropped on the JWKS path."""
    oct_secret = b"published-oct-secret-0123456789abcdef"
    server.keys = [*server.keys, {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": b64url(oct_secret)}]
    verifier = jwks_verifier(server.url, algorithms=("EdDSA", "HS256", "none", "HS512"))
    assert verifier.algorithms == ("EdDSA",)
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    await refused(verifier, jwt.encode(claims(), oct_secret, algorithm="HS256", headers={"kid": "hmac"}))
    with pytest.raises(ValueError, match="asymmetric"):
        jwks_verifier(server.url, algorithms=("HS256", "none"))


async def test_algorithms_outside_the_configuration_are_refused(server: JwksServer, keys: Keys) -> None:
    verifier = jwks_verifier(server.url, algorithms=("EdDSA",))
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    assert await refused(verifier, keys.by_alg["RS256"].sign(claims())) == "Token algorithm is not accepted"


# --- key caching, refresh pacing, rotation and outages -----------------------------------------


async def test_a_burst_of_unknown_kids_hits_the_server_at_most_once(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock)
    key = keys.by_alg["EdDSA"]

    def burst() -> list[str]:
        return [key.sign(claims(), kid=f"random-{uuid.uuid4()}") for _ in range(50)]

    cold = await asyncio.gather(*(verifier.verify(t) for t in burst()), return_exceptions=True)
    assert all(isinstance(outcome, Unauthenticated) for outcome in cold)
    assert server.hits == 1  # the first fetch; the other 49 waited for it and did not fetch again

    await verifier.verify(key.sign(claims()))
    assert server.hits == 1  # a cached kid costs nothing

    clock.advance(31)
    warm = await asyncio.gather(*(verifier.verify(t) for t in burst()), return_exceptions=True)
    assert all(isinstance(outcome, Unauthenticated) for outcome in warm)
    assert server.hits == 2  # one refresh for the whole burst


async def test_key_rotation_is_picked_up_with_exactly_one_refresh(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock)
    old, new = keys.by_alg["EdDSA"], new_ed25519("ed-2")
    server.publish(old)
    await verifier.verify(old.sign(claims()))
    assert server.hits == 1

    server.publish(new, old)  # Better Auth keeps the previous key published after a rotation
    await verifier.verify(old.sign(claims()))
    assert server.hits == 1  # the old key is still cached

    clock.advance(31)
    assert (await verifier.verify(new.sign(claims(sub="rotated")))).user_id == "rotated"
    assert server.hits == 2
    await verifier.verify(new.sign(claims()))
    await verifier.verify(old.sign(claims()))
    assert server.hits == 2


async def test_a_new_kid_inside_the_refresh_interval_waits_for_the_interval(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock)
    old, new = keys.by_alg["EdDSA"], new_ed25519("ed-3")
    server.publish(old)
    await verifier.verify(old.sign(claims()))
    server.publish(new, old)
    await refused(verifier, new.sign(claims()))
    assert server.hits == 1
    clock.advance(30)
    await verifier.verify(new.sign(claims()))
    assert server.hits == 2


async def test_a_key_removed_from_the_set_stops_verifying_after_a_refresh(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock)
    old, new = keys.by_alg["EdDSA"], new_ed25519("ed-4")
    server.publish(old)
    await verifier.verify(old.sign(claims()))
    server.publish(new)
    clock.advance(31)
    await verifier.verify(new.sign(claims()))
    assert await refused(verifier, old.sign(claims())) == "Token signing key is not known"
    assert server.hits == 2


async def test_cached_keys_verify_without_a_thread_or_the_network(
    make_server: Callable[[], JwksServer], keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server()
    server.publish(*keys.published())
    verifier = jwks_verifier(server.url)
    await verifier.verify(keys.by_alg["ES256"].sign(claims()))
    server.stop()

    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached key must not need a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    for alg in ASYMMETRIC:
        assert (await verifier.verify(keys.by_alg[alg].sign(claims()))).user_id == "user-1"


async def test_auth_server_down_keeps_cached_kids_and_is_unavailable_for_others(
    make_server: Callable[[], JwksServer], keys: Keys
) -> None:
    server = make_server()
    server.publish(*keys.published())
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock)
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    server.stop()

    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    clock.advance(31)
    unknown = keys.by_alg["EdDSA"].sign(claims(), kid="rotated-while-down")
    with pytest.raises(AuthUnavailable) as caught:
        await verifier.verify(unknown)
    assert caught.value.retry_after == 30  # when the next fetch may be tried
    clock.advance(20)
    with pytest.raises(AuthUnavailable) as caught:  # inside the interval: no new attempt, same answer
        await verifier.verify(unknown)
    assert caught.value.retry_after == 10
    await verifier.verify(keys.by_alg["RS256"].sign(claims()))
    # Bad tokens are still the client's fault, outage or not.
    await refused(verifier, keys.by_alg["EdDSA"].sign(claims(exp=int(time.time()) - 3600)))


async def test_expired_cache_with_the_server_down_falls_back_to_the_last_good_keys(
    make_server: Callable[[], JwksServer], keys: Keys
) -> None:
    server = make_server()
    server.publish(*keys.published())
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock, cache_ttl_seconds=0.05)
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    server.stop()
    await asyncio.sleep(0.1)  # let PyJWKClient's cache expire (it keeps its own monotonic time)
    clock.advance(31)
    assert (await verifier.verify(keys.by_alg["EdDSA"].sign(claims(sub="stale-ok")))).user_id == "stale-ok"
    with pytest.raises(AuthUnavailable):
        await verifier.verify(keys.by_alg["EdDSA"].sign(claims(), kid="never-seen"))


async def test_expired_cache_is_refetched_once(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock, cache_ttl_seconds=0.05)
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    await asyncio.sleep(0.1)
    clock.advance(31)
    tokens = [keys.by_alg["EdDSA"].sign(claims()) for _ in range(10)]
    await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert server.hits == 2


async def test_a_slow_refetch_does_not_hold_up_tokens_whose_key_is_cached(server: JwksServer, keys: Keys) -> None:
    clock = FakeClock()
    verifier = jwks_verifier(server.url, clock=clock, cache_ttl_seconds=0.05)
    await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))
    await asyncio.sleep(0.1)
    clock.advance(31)
    server.mode = "hold"
    refetching = asyncio.create_task(verifier.verify(keys.by_alg["EdDSA"].sign(claims())))
    assert await asyncio.to_thread(server.held.wait, 5)  # the refetch is at the server, being held there
    try:
        other = await asyncio.wait_for(verifier.verify(keys.by_alg["ES256"].sign(claims(sub="meanwhile"))), 5)
        assert other.user_id == "meanwhile"
        assert not refetching.done()
    finally:
        server.release.set()
    assert (await refetching).user_id == "user-1"
    assert server.hits == 2


async def test_unreachable_auth_server_is_unavailable_not_unauthenticated(
    make_server: Callable[[], JwksServer], keys: Keys
) -> None:
    server = make_server()
    server.stop()
    with pytest.raises(AuthUnavailable):
        await jwks_verifier(server.url, fetch_timeout_seconds=2).verify(keys.by_alg["EdDSA"].sign(claims()))


@pytest.mark.parametrize("mode", ["not_json", "array", "no_keys", "unusable_keys", "error"])
async def test_a_response_that_is_not_a_key_set_is_unavailable(server: JwksServer, keys: Keys, mode: str) -> None:
    server.mode = mode
    with pytest.raises(AuthUnavailable):
        await jwks_verifier(server.url).verify(keys.by_alg["EdDSA"].sign(claims()))
    assert server.hits == 1


async def test_redirects_from_the_key_server_are_not_followed(
    server: JwksServer, keys: Keys, make_server: Callable[[], JwksServer]
) -> None:
    evil = make_server()
    evil.publish(keys.attacker)
    server.mode, server.redirect_to = "redirect", evil.url
    with pytest.raises(AuthUnavailable):
        await jwks_verifier(server.url).verify(keys.attacker.sign(claims()))
    assert evil.hits == 0


def test_jwks_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="http"):
        JwksTokenVerifier("file:///etc/passwd")
    with pytest.raises(ValueError, match="unsupported"):
        JwksTokenVerifier("https://auth.test/api/auth/jwks", algorithms=("EdDSA", "XS999"))
    with pytest.raises(ValueError, match="cache_ttl_seconds"):
        JwksTokenVerifier("https://auth.test/api/auth/jwks", cache_ttl_seconds=0)
    with pytest.raises(ValueError, match="leeway_seconds"):
        JwksTokenVerifier("https://auth.test/api/auth/jwks", leeway_seconds=-1)


# --- HS256 specifics --------------------------------------------------------------------------


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Hs256TokenVerifier("too-short")
    with pytest.raises(ValueError, match="32 bytes"):
        mint_hs256_token("too-short", user_id="u")


async def test_minted_tokens_round_trip() -> None:
    token = mint_hs256_token(SECRET, user_id="alice", email="a@example.com", issuer=ISSUER, audience=AUDIENCE)
    assert await hs256_verifier().verify(token) == Principal(user_id="alice", email="a@example.com")
    plain = mint_hs256_token(SECRET, user_id="bob", ttl_seconds=60)
    assert (await Hs256TokenVerifier(SECRET).verify(plain)).user_id == "bob"
    await refused(hs256_verifier(), plain)  # an issuer/audience configured but absent from the token
    with pytest.raises(ValueError, match="user_id"):
        mint_hs256_token(SECRET, user_id="")
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint_hs256_token(SECRET, user_id="u", ttl_seconds=0)


async def test_issuer_and_audience_are_checked_only_when_configured() -> None:
    token = hs256_sign(claims(iss="http://anyone.test", aud="http://anything.test"))
    assert (await Hs256TokenVerifier(SECRET).verify(token)).user_id == "user-1"
    await refused(hs256_verifier(), token)


async def test_zero_leeway_is_strict() -> None:
    token = hs256_sign(claims(exp=int(time.time()) - 5))
    await hs256_verifier().verify(token)
    await refused(hs256_verifier(leeway_seconds=0), token)


def test_the_secret_is_not_in_the_repr() -> None:
    assert SECRET not in repr(hs256_verifier())
    assert SECRET not in repr(AlgorithmRoutingTokenVerifier(hs256=hs256_verifier(), jwks=None))


# --- routing ----------------------------------------------------------------------------------


def test_routing_needs_a_verifier() -> None:
    with pytest.raises(ValueError, match="needs an HS256 or a JWKS verifier"):
        AlgorithmRoutingTokenVerifier(hs256=None, jwks=None)


async def test_routing_without_hs256_refuses_hs256_without_touching_the_key_server(
    server: JwksServer, keys: Keys
) -> None:
    verifier = AlgorithmRoutingTokenVerifier(hs256=None, jwks=jwks_verifier(server.url))
    assert await refused(verifier, hs256_sign(claims())) == "Token algorithm is not accepted"
    assert server.hits == 0
    assert (await verifier.verify(keys.by_alg["EdDSA"].sign(claims()))).user_id == "user-1"


async def test_routing_without_jwks_refuses_asymmetric_tokens(keys: Keys) -> None:
    verifier = AlgorithmRoutingTokenVerifier(hs256=hs256_verifier(), jwks=None)
    for alg in ASYMMETRIC:
        assert await refused(verifier, keys.by_alg[alg].sign(claims())) == "Token algorithm is not accepted"
    assert (await verifier.verify(hs256_sign(claims()))).user_id == "user-1"


async def test_routing_follows_the_jwks_configuration(server: JwksServer, keys: Keys) -> None:
    jwks = jwks_verifier(server.url, algorithms=("EdDSA",))
    verifier = AlgorithmRoutingTokenVerifier(hs256=hs256_verifier(), jwks=jwks)
    await refused(verifier, keys.by_alg["ES256"].sign(claims()))
    assert server.hits == 0


# --- fuzz: whatever arrives, the answer is Unauthenticated -------------------------------------

_header_values = st.one_of(
    st.sampled_from(["none", "HS256", "HS384", "EdDSA", "ES256", "RS256", "PS256", "RS512", "ES384"]),
    st.text(max_size=10),
    st.integers(),
    st.none(),
)


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    header: dict[str, Any] = {"alg": draw(_header_values)}
    if draw(st.booleans()):
        header["kid"] = draw(st.one_of(st.sampled_from(["ed-1", "ec-1", "rsa-1", "pss-1"]), st.text(max_size=10)))
    if draw(st.booleans()):
        header["crit"] = draw(st.lists(st.text(max_size=5), max_size=2))
    payload = draw(
        st.dictionaries(
            st.sampled_from(["sub", "exp", "nbf", "iat", "iss", "aud", "email"]),
            st.one_of(st.integers(), st.text(max_size=20), st.none(), st.lists(st.integers(), max_size=2)),
        )
    )
    signature = draw(st.binary(max_size=300))
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)])


@pytest.fixture
def warm_routing(server: JwksServer, keys: Keys) -> Iterator[tuple[asyncio.Runner, AlgorithmRoutingTokenVerifier]]:
    """Both verifiers, keys already fetched (a made-up kid is then refused without a fetch), and a loop to run them."""
    verifier = AlgorithmRoutingTokenVerifier(hs256=hs256_verifier(), jwks=jwks_verifier(server.url))
    with asyncio.Runner() as runner:
        runner.run(verifier.verify(keys.by_alg["EdDSA"].sign(claims())))
        yield runner, verifier


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.one_of(st.text(max_size=300), jwt_shaped()))
def test_arbitrary_input_is_only_ever_unauthenticated(
    token: str, warm_routing: tuple[asyncio.Runner, AlgorithmRoutingTokenVerifier]
) -> None:
    runner, verifier = warm_routing
    with pytest.raises(Unauthenticated):  # not accepted, and not any other error either
        runner.run(verifier.verify(token))
