"""Server-Sent Events read from raw bytes: the fields the benchmark needs (``event``, ``data``), cheaply.

Both the load generator (reading chatcore's and the floor's streams, hundreds at once) and the floor
(reading the model's stream) share the machine with the server under test, so every event they parse
costs the figures something. This reader works on bytes, splits on blank lines and decodes nothing but
the ``event`` and ``data`` fields (``id`` and comments are skipped); a client library such as httpx-sse
decodes every line to text first, several times the CPU per event. Lines end in ``\\n``, ``\\r\\n`` or
``\\r``, as the specification allows (Litestar writes ``\\r\\n``, the providers ``\\n``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    event: bytes
    """The event's type (``message`` when the event has no ``event`` field, as the specification says)."""
    data: bytes
    """Its ``data`` lines, joined by ``\\n``."""


async def events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    """The events in a stream of bytes, split however the network split them; an unfinished last event is dropped."""
    pending = b""
    async for chunk in chunks:
        buffer, held = pending + chunk, b""
        if buffer.endswith(b"\r"):  # maybe the first half of a "\r\n": decided with the next chunk
            buffer, held = buffer[:-1], b"\r"
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, rest = buffer.split(b"\n\n")
        pending = rest + held
        for block in blocks:
            event = parse_block(block)
            if event is not None:
                yield event


def parse_block(block: bytes) -> Event | None:
    """One event's lines (already split on ``\\n``); None for a block of comments or ids only."""
    event = b"message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name:
            continue  # a comment (":…"), or a field without a value, which the benchmark never needs
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    if not data:
        return None
    return Event(event, b"\n".join(data))
