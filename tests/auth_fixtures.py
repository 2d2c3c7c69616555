"""Keys, tokens and a JWKS server shaped like Better Auth's, shared by the verifier contract and the HTTP tests.

The server is a real HTTP server on 127.0.0.1 (a thread), so the code under test fetches
keys exactly as it would from Better Auth's ``/api/auth/jwks``; it counts its requests,
rotates keys, serves garbage and goes down on demand.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import get_default_algorithms

ISSUER = AUDIENCE = "http://auth.test"  # Better Auth's default: its base URL for both
JWKS_PATH = "/api/auth/jwks"
ASYMMETRIC = ("EdDSA", "ES256", "RS256", "PS256")


# --- keys and tokens ------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """A private key as the auth server holds it; ``jwk()`` is what it publishes."""

    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = get_default_algorithms()[self.alg].to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **headers})


@dataclass(frozen=True)
class Keys:
    by_alg: dict[str, SigningKey]
    rsa_public_pem: bytes
    attacker: SigningKey
    attacker_cert_der: bytes

    def published(self) -> list[SigningKey]:
        return list(self.by_alg.values())


def new_ed25519(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def build_keys() -> Keys:
    """One key per asymmetric algorithm (RS256 and PS256 share the RSA key), and an attacker's key and certificate."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker = new_ed25519("attacker")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(attacker.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(attacker.private, algorithm=None)
    )
    return Keys(
        by_alg={
            "EdDSA": new_ed25519("ed-1"),
            "ES256": SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
            "RS256": SigningKey("rsa-1", "RS256", rsa_key),
            "PS256": SigningKey("pss-1", "PS256", rsa_key),
        },
        rsa_public_pem=rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        attacker=attacker,
        attacker_cert_der=cert.public_bytes(serialization.Encoding.DER),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid Better Auth-like claims; an override of ``None`` removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-1",
        "email": "user1@example.com",
        "name": "User One",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hand_made(header: dict[str, Any], payload: dict[str, Any], signer: Callable[[bytes], bytes] | None = None) -> str:
    """A token PyJWT would refuse to make (``alg: none``, HMAC keyed with a PEM)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64url(signature)}"


# --- the JWKS server ------------------------------------------------------------------------


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    jwks: JwksServer


class _Handler(BaseHTTPRequestHandler):
    server: _Httpd

    def do_GET(self) -> None:
        status, headers, body = self.server.jwks.respond(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class JwksServer:
    """Serves a key set like Better Auth's ``/api/auth/jwks``; ``mode`` makes it misbehave."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"
    redirect_to: str = ""
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    """In ``hold`` mode a request waits for this before it is answered."""
    held: threading.Event = field(default_factory=threading.Event)
    """Set when a request is being held."""

    def __post_init__(self) -> None:
        self._httpd = _Httpd(("127.0.0.1", 0), _Handler)
        self._httpd.jwks = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        self._running = True

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + JWKS_PATH

    @property
    def hits(self) -> int:
        return len(self.requests)

    def publish(self, *signing_keys: SigningKey) -> None:
        self.keys = [k.jwk() for k in signing_keys]

    def reset(self, *signing_keys: SigningKey) -> None:
        self.publish(*signing_keys)
        self.mode = "ok"
        self.release.clear()
        self.held.clear()
        self.requests.clear()

    def respond(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(path)
        as_json = {"Content-Type": "application/json"}
        if path != JWKS_PATH:
            return 404, as_json, b'{"error": "not found"}'
        match self.mode:
            case "ok":
                return 200, as_json, json.dumps({"keys": self.keys}).encode()
            case "not_json":
                return 200, {"Content-Type": "text/html"}, b"<html>maintenance</html>"
            case "array":
                return 200, as_json, json.dumps(self.keys).encode()
            case "no_keys":
                return 200, as_json, b'{"keys": []}'
            case "unusable_keys":
                return 200, as_json, b'{"keys": [{"kty": "XYZ", "kid": "k"}, "junk"]}'
            case "error":
                return 500, as_json, b'{"error": "boom"}'
            case "redirect":
                return 302, {"Location": self.redirect_to}, b""
            case "hold":
                self.held.set()
                self.release.wait(timeout=10)
                return 200, as_json, json.dumps({"keys": self.keys}).encode()
        raise AssertionError(self.mode)

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.release.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
