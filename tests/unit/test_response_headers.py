"""The headers every response gets on its way out (``add_missing_headers``, run for every response)."""

from __future__ import annotations

from typing import Any

from chatcore.entrypoints.http.app import SECURITY_HEADERS, add_missing_headers


def _start(*headers: tuple[bytes, bytes]) -> Any:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def test_missing_security_headers_and_the_request_id_are_added() -> None:
    message = _start((b"content-type", b"application/json"))
    add_missing_headers(message, {"type": "http", "chatcore.request_id": "abc123"})

    sent = dict(message["headers"])
    assert sent[b"content-type"] == b"application/json"
    for name, value in SECURITY_HEADERS.items():
        assert sent[name.lower().encode()] == value.encode()
    assert sent[b"x-request-id"] == b"abc123"


def test_headers_the_response_set_itself_are_kept_once() -> None:
    message = _start((b"cache-control", b"max-age=60"), (b"x-request-id", b"from-the-route"))
    add_missing_headers(message, {"type": "http"})

    names = [name for name, _ in message["headers"]]
    assert names.count(b"cache-control") == 1
    assert names.count(b"x-request-id") == 1
    assert dict(message["headers"])[b"cache-control"] == b"max-age=60"
    assert dict(message["headers"])[b"x-request-id"] == b"from-the-route"


def test_a_response_outside_any_request_id_gets_a_fresh_one() -> None:
    message = _start()
    add_missing_headers(message, {"type": "http"})

    request_id = dict(message["headers"])[b"x-request-id"]
    assert len(request_id) == 32
    int(request_id, 16)
