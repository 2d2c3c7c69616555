"""chatcore.adapters.providers.sse: the SSE standard's framing, however the bytes are cut into chunks."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable

from hypothesis import given
from hypothesis import strategies as st

from chatcore.adapters.providers.sse import Event, events


async def chunked(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read(*pieces: bytes) -> list[Event]:
    return [event async for event in events(chunked(pieces))]


async def test_openai_style_data_lines() -> None:
    body = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert await read(body) == [Event(b"", b'{"a": 1}'), Event(b"", b'{"b": 2}'), Event(b"", b"[DONE]")]


async def test_anthropic_style_named_events() -> None:
    body = b'event: message_start\ndata: {"type":"message_start"}\n\nevent: ping\ndata: {"type": "ping"}\n\n'
    assert await read(body) == [
        Event(b"message_start", b'{"type":"message_start"}'),
        Event(b"ping", b'{"type": "ping"}'),
    ]


async def test_crlf_and_cr_line_ends_comments_and_multiline_data() -> None:
    body = b": keep-alive\r\n\r\nevent:x\rdata:one\rdata: two\r\rdata\n\n"
    assert await read(body) == [Event(b"x", b"one\ntwo"), Event(b"", b"")]


async def test_an_event_the_body_ends_in_the_middle_of_is_dropped() -> None:
    assert await read(b'data: {"a": 1}\n\ndata: {"b"') == [Event(b"", b'{"a": 1}')]
    assert await read(b"data: x\n") == []


async def test_only_the_first_space_after_the_colon_is_dropped() -> None:
    assert await read(b"data:  two spaces\n\n") == [Event(b"", b" two spaces")]


STREAM = (
    b'event: message_start\r\ndata: {"type": "message_start"}\r\n\r\n'
    b": comment\n\n"
    b"data: first\ndata: second\n\n"
    b"event: error\rdata: {}\r\r"
    b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
async def test_the_same_events_wherever_the_chunks_are_cut(cuts: list[int]) -> None:
    points = sorted({0, len(STREAM), *cuts})
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert await read(*pieces) == [
        Event(b"message_start", b'{"type": "message_start"}'),
        Event(b"", b"first\nsecond"),
        Event(b"error", b"{}"),
        Event(b"", b"[DONE]"),
    ]
