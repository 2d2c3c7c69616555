"""The names of the provider SDKs' HTTP transports (``CHATCORE_LLM_HTTP``), apart from the transports themselves.

Settings validate the choice in every install; ``transports`` builds the transport and needs httpx2, which only
the ``openai``, ``anthropic`` and ``mcp`` extras bring.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

ProviderHttp: TypeAlias = Literal["aiohttp", "httpx"]
PROVIDER_HTTP: Final[tuple[ProviderHttp, ...]] = ("aiohttp", "httpx")
