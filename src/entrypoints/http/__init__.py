"""The Litestar HTTP adapter; ``ChatcorePlugin`` and ``create_asgi_app`` put it inside another application.

Both are loaded on first use (``hosting``), after checking that the ``server`` extra is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatcore.entrypoints.http.hosting import ChatcorePlugin, create_asgi_app

__all__ = ["ChatcorePlugin", "create_asgi_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from chatcore.entrypoints.extras import require_extra

        require_extra("server", f"chatcore.entrypoints.http.{name}")
        from chatcore.entrypoints.http import hosting

        return getattr(hosting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
