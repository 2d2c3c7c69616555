"""SdkAgent: what both provider agents are built from — their settings, their SDK client and its HTTP client.

Both SDKs take the same settings (key, base URL, timeout, retries) and an httpx2 client; the agent
builds that client once (``sdk_http_client``) on the transport it is given, hands it to the SDK, and
closes both when it owns them. A caller's own SDK client is used as it is and never closed here.
"""

from __future__ import annotations

from typing import ClassVar, Generic, Protocol, TypeVar

import httpx2

from chatcore.adapters.providers.transports import sdk_http_client


class SdkClient(Protocol):
    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=SdkClient)


class SdkAgent(Generic[ClientT]):
    """The common part of an LLMAgent on a provider SDK; a subclass maps requests, replies and errors.

    ``model`` defaults to the subclass's ``default_model``; ``max_tokens``, ``temperature`` are sent with
    every request (``temperature`` only when set). ``timeout_seconds`` and ``max_retries`` are the
    SDK's own. ``client`` lets a caller share or customise an SDK client; then the agent does not close
    it and the connection settings are the client's own. ``transport`` carries the agent's own client's
    requests (``chatcore.adapters.providers.transports``; ``chatcore serve`` passes aiohttp's), by
    default httpx2's (``SpreadConnectionPools``), which ``pytest-httpx2`` intercepts.
    """

    provider: str
    default_model: ClassVar[str]

    def __init__(
        self,
        *,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 1024,
        temperature: float | None = None,
        timeout_seconds: float = 60.0,
        max_retries: int = 2,
        client: ClientT | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.model = model or self.default_model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._max_retries = max_retries
        self._http: httpx2.AsyncClient | None = None
        """The agent's own SDK client's HTTP client (None with a caller's client)."""
        if client is None:
            self._http = sdk_http_client(timeout_seconds, transport)
            client = self._new_client(
                api_key=api_key, base_url=base_url, timeout_seconds=timeout_seconds, max_retries=max_retries
            )
        self._client: ClientT = client

    def _new_client(
        self, *, api_key: str | None, base_url: str | None, timeout_seconds: float, max_retries: int
    ) -> ClientT:
        """The SDK client on ``self._http``; None reads the SDK's environment variables. Nothing connects.

        Raises ValueError when there is no credential: a configuration mistake, caught at startup.
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release the SDK client's connections, when this agent created the client."""
        if self._http is not None:
            await self._client.close()
            await self._http.aclose()
