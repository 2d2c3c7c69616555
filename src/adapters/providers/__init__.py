"""What the provider adapters share: the HTTP under their SDKs, and the one classification of provider failures.

``transports``: the httpx2 client an agent hands its SDK and the transport under it (aiohttp's, or
spread httpx2 pools); ``aiohttp_transport``: the SDKs' aiohttp transport with refused and dropped
connections reported as connection errors; ``errors``: what failed, as each adapter read it off its
SDK, turned into chatcore's errors by one function. Nothing here imports a provider SDK.
"""
