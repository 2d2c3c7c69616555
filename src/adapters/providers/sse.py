"""Server-sent events read straight off a provider's streamed response, as bytes, for msgspec to decode.

The SDKs' own stream readers decode every line to text, then every event's JSON to a dict, then build a
pydantic object of it (``construct_type``): two thirds of a streamed step's CPU in the agent. Here an
event is the ``event:`` name and the ``data:`` bytes, split out of the body with a few ``bytes`` calls,
and each adapter decodes the data into its own msgspec Structs. The framing is the SSE standard's
(WHATWG HTML, "Parsing an event stream"): lines end in LF, CRLF or CR; a blank line ends an event;
several ``data:`` lines join with LF; one space after the colon is dropped; ``:`` starts a comment;
``id`` and ``retry`` are not needed by a model stream and are skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its ``event:`` name (``b""`` when none was given) and its ``data:`` bytes."""

    name: bytes
    data: bytes


async def events(body: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    """The events of an event stream whose bytes arrive as ``body`` (a response's ``aiter_bytes``).

    An event still open when the body ends is dropped, as the standard says.
    """
    pending = b""  # the last line so far, not yet ended
    after_cr = False  # the previous chunk ended in CR: an LF starting this one belongs to it
    name = b""
    data: list[bytes] = []
    async for chunk in body:
        if not chunk:
            continue
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = False
        if b"\r" in chunk:
            after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line:  # a blank line dispatches the event
                if data:
                    yield Event(name, b"\n".join(data))
                name, data = b"", []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                name = line[7:] if line.startswith(b"event: ") else line[6:]
            elif line == b"data":
                data.append(b"")
            # comments (":..."), id, retry and unknown fields are not needed
