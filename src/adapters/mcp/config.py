"""Which MCP servers to mount: one frozen value per server, parsed from the ``CHATCORE_MCP_SERVERS`` setting."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

SETTING: Final = "CHATCORE_MCP_SERVERS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYS: Final = frozenset({"name", "command", "env", "url", "headers"})


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One MCP server: a ``command`` run over stdio (plus ``env``) or a streamable-HTTP ``url`` (plus ``headers``).

    ``env`` and ``headers`` often carry API keys, so they are left out of ``repr``.
    A stdio server does not inherit chatcore's environment (database URL, auth secret):
    the SDK passes only PATH, HOME and similar, plus ``env``.
    """

    name: str
    command: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"MCP server name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                "or digit"
            )
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of 'command' (stdio) or 'url' (HTTP)")
        if self.command is not None:
            if isinstance(self.command, str) or not self.command or not all(isinstance(a, str) for a in self.command):
                raise ValueError(f"MCP server {self.name!r}: 'command' must be a non-empty list of strings")
            if not self.command[0]:
                raise ValueError(f"MCP server {self.name!r}: 'command' must start with a program name")
            if self.headers:
                raise ValueError(f"MCP server {self.name!r}: 'headers' apply to 'url' servers only")
            object.__setattr__(self, "command", tuple(self.command))
        if self.url is not None:
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"MCP server {self.name!r}: 'url' must be an http:// or https:// URL")
            if self.env:
                raise ValueError(f"MCP server {self.name!r}: 'env' applies to 'command' servers only")
        object.__setattr__(self, "env", _string_map(self.name, "env", self.env))
        object.__setattr__(self, "headers", _string_map(self.name, "headers", self.headers))

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


def _string_map(server: str, key: str, value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"MCP server {server!r}: {key!r} must be an object of string values")
    return MappingProxyType(dict(value))


def parse_mcp_servers(value: str) -> list[McpServerConfig]:
    """The servers a ``CHATCORE_MCP_SERVERS`` value names; blank means none.

    The value is a JSON list such as
    ``[{"name": "files", "command": ["python", "-m", "x"]}, {"name": "weather", "url": "http://127.0.0.1:9000/mcp"}]``.
    Raises ValueError saying which entry is wrong and why, so a typo stops start-up instead of silently
    dropping a server.
    """
    if not value.strip():
        return []
    try:
        decoded: Any = json.loads(value)
    except ValueError as error:
        raise ValueError(f"{SETTING} must be a JSON list of server objects: {error}") from None
    if not isinstance(decoded, list):
        raise ValueError(f"{SETTING} must be a JSON list of server objects, not {type(decoded).__name__}")
    servers: list[McpServerConfig] = []
    for index, entry in enumerate(decoded, start=1):
        where = f"{SETTING} entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a JSON object")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            known = ", ".join(sorted(_KEYS))
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {known}")
        if "name" not in entry:
            raise ValueError(f"{where} needs a 'name'")
        try:
            server = McpServerConfig(
                name=entry["name"],
                command=entry.get("command"),
                env=entry.get("env", {}),
                url=entry.get("url"),
                headers=entry.get("headers", {}),
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if any(existing.name == server.name for existing in servers):
            raise ValueError(f"{where}: the name {server.name!r} is used twice")
        servers.append(server)
    return servers
