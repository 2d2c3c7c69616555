"""The SSE reader finds every event however the bytes are split, with any of the three line endings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from bench.sse import Event, events, parse_block

STREAM = (
    b": a comment\n\n"
    b'id: 1\nevent: turn\ndata: {"conversation_id":"c"}\n\n'
    b'event: delta\ndata: {"text":"Hel"}\n\n'
    b"data: first line\ndata:second line\n\n"
    b"id: 9\n\n"
    b"event: done\ndata: {}\n\n"
    b"event: delta\ndata: unfinished"
)
EXPECTED = [
    Event(b"turn", b'{"conversation_id":"c"}'),
    Event(b"delta", b'{"text":"Hel"}'),
    Event(b"message", b"first line\nsecond line"),
    Event(b"done", b"{}"),
]


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(parts: Iterable[bytes]) -> list[Event]:
    return [event async for event in events(_chunks(parts))]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_every_event_whatever_the_split_and_line_ending(ending: bytes, size: int) -> None:
    stream = STREAM.replace(b"\n", ending)
    parts = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert await _read(parts) == EXPECTED


def test_a_block_without_data_is_no_event() -> None:
    assert parse_block(b"id: 3") is None
    assert parse_block(b": keep-alive") is None
    assert parse_block(b"event: delta\ndata") is None
    assert parse_block(b"event:delta\ndata:x") == Event(b"delta", b"x")
