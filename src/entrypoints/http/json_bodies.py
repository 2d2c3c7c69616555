"""JSON request bodies nested too deeply are 400, decided once for every route of the app.

The framework decodes a body with msgspec, which recurses once per level and raises
``RecursionError`` (a 500) near Python's recursion limit: a 4 KB body of 2,000 nested arrays
was enough. Even a body the decoder can take may be too deep for what comes after it (``json``
encoding for storage, fingerprints), so a body nested deeper than ``MAX_JSON_DEPTH`` is refused
before it is decoded. No body of this API needs more than a handful of levels; tool arguments
sent back by a frontend get the rest.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

from chatcore.errors import InvalidRequest

T = TypeVar("T")

MAX_JSON_DEPTH = 64
"""Nesting levels (arrays and objects) a JSON request body may have."""
TOO_DEEP = f"JSON body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects"

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_depth(body: bytes) -> int:
    """How deep ``body``'s arrays and objects nest (brackets inside strings do not count), without decoding it:
    only the brackets left once strings are cut out are walked in Python."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[byte] for byte in brackets), default=0)


def too_deep(body: bytes) -> bool:
    """Whether ``body`` nests deeper than ``MAX_JSON_DEPTH``. A body with no more brackets than that cannot, so the
    usual body costs two ``bytes.count`` calls."""
    return body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and nesting_depth(body) > MAX_JSON_DEPTH


class JsonBodyRequest(Request[Any, Any, Any]):
    """The app's request class: ``json()`` (which the framework uses for every ``data`` parameter) refuses a body
    nested deeper than ``MAX_JSON_DEPTH``; the framework answers its ``SerializationException`` with 400."""

    async def json(self) -> Any:
        if too_deep(await self.body()):
            raise SerializationException(TOO_DEEP)
        try:
            return await super().json()
        except RecursionError:  # not reachable under the limit; kept so no body can ever make a 500 here
            raise SerializationException(TOO_DEEP) from None


def decode_body(body: bytes, into: type[T], *, name: str) -> T:
    """``body`` decoded into ``into``, or InvalidRequest (400) saying what is wrong with it: for the routes that read
    their raw body themselves (the AI SDK's and AG-UI's, whose bodies carry whatever a frontend keeps)."""
    if too_deep(body):
        raise InvalidRequest(TOO_DEEP)
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as error:
        raise InvalidRequest(f"Invalid {name}: {error}") from None
    except msgspec.DecodeError:
        raise InvalidRequest(f"The {name} must be a JSON object") from None
    except RecursionError:
        raise InvalidRequest(TOO_DEEP) from None
