"""The chat page at ``/``: one static HTML file to try the API in a browser, and the dev-mode demo token.

The page's only script and style are inline; a Content-Security-Policy allows exactly those
(by hash) and requests to this origin, so nothing else can run in it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any

from litestar import Controller, MediaType, Request, get
from litestar.exceptions import NotFoundException
from litestar.response import Response

from chatcore.entrypoints.cli import DEMO_USER_ID
from chatcore.entrypoints.http.conversation_dto import DevToken

PAGE = "chat.html"


@cache
def page() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy, read from the package once."""
    html = resources.files("chatcore.entrypoints.http").joinpath("static", PAGE).read_text(encoding="utf-8")
    scripts = " ".join(_hashes(html, "script"))
    styles = " ".join(_hashes(html, "style"))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, policy


def _hashes(html: str, tag: str) -> list[str]:
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    ]


class PageController(Controller):
    path = "/"
    include_in_schema = False

    @get("/", media_type=MediaType.HTML, summary="The chat page")
    async def chat_page(self) -> Response[str]:
        html, policy = page()
        return Response(html, media_type=MediaType.HTML, headers={"Content-Security-Policy": policy})

    @get("/dev/token", summary="The demo user's token (dev mode only; 404 otherwise)")
    async def dev_token(self, request: Request[Any, Any, Any]) -> DevToken:
        token = getattr(request.app.state, "demo_token", None)
        if not isinstance(token, str) or not token:
            raise NotFoundException()
        return DevToken(user_id=DEMO_USER_ID, token=token)
