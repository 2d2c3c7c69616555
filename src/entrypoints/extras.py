"""The distribution's optional extras, and the one clear error a setting or command raises when its extra is missing.

``pip install chatcore`` is the library: the domain, the fakes, the function tools, the SQL store and the
token verifiers. The server, the provider SDKs, MCP, Redis and OpenTelemetry come with extras
(``pyproject.toml``). Whatever needs one checks for it here before importing it, so a user reads
``CHATCORE_LLM=openai needs the openai extra: pip install 'chatcore[openai]'`` instead of a traceback
ending in ``No module named 'openai'``. Checking imports nothing: ``importlib.util.find_spec`` only looks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Final

from chatcore.entrypoints.settings import Settings

EXTRA_MODULES: Final[Mapping[str, tuple[str, ...]]] = {
    "server": ("litestar", "uvicorn", "dependency_injector", "structlog", "prometheus_client"),
    "openai": ("openai", "aiohttp"),
    "anthropic": ("anthropic", "aiohttp"),
    "mcp": ("mcp",),
    "redis": ("redis",),
    "otel": (
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.http",
        "opentelemetry.instrumentation.sqlalchemy",
    ),
}
"""What each extra of ``pyproject.toml`` installs, by the modules chatcore imports from it."""


class MissingExtra(ImportError):
    """Something configured or called needs an extra that is not installed; the message says how to install it."""

    def __init__(self, needed_by: str, extra: str) -> None:
        super().__init__(f"{needed_by} needs the {extra} extra: pip install 'chatcore[{extra}]'")
        self.needed_by = needed_by
        self.extra = extra


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a dotted name imports its parent packages)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require_extra(extra: str, needed_by: str) -> None:
    """Raise ``MissingExtra`` unless every module of ``extra`` is installed."""
    if not all(is_installed(module) for module in EXTRA_MODULES[extra]):
        raise MissingExtra(needed_by, extra)


def extras_needed(settings: Settings) -> list[tuple[str, str]]:
    """``(what needs it, extra)`` for each extra these settings make the server use, besides ``server`` itself."""
    needed: list[tuple[str, str]] = []
    if settings.llm in ("openai", "anthropic"):
        needed.append((f"CHATCORE_LLM={settings.llm}", settings.llm))
    if settings.mcp_servers:
        needed.append(("CHATCORE_MCP_SERVERS", "mcp"))
    if settings.redis_url:
        needed.append(("CHATCORE_REDIS_URL", "redis"))
    if settings.otlp_traces_endpoint:
        needed.append(("OTEL_EXPORTER_OTLP_ENDPOINT", "otel"))
    return needed


def require_extras(settings: Settings) -> None:
    """Raise ``MissingExtra`` for the first extra these settings need that is not installed."""
    for needed_by, extra in extras_needed(settings):
        require_extra(extra, needed_by)
