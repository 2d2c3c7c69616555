r"""A fake model provider for the benchmark: OpenAI and Anthropic wire formats, configurable latency, tool calls.

Bare ASGI on uvicorn, one process, so it costs the machine as little as possible while the
servers under test are measured. It answers

- ``POST /v1/chat/completions`` (OpenAI chat completions) and ``POST /v1/messages`` (Anthropic
  messages) with complete, SDK-parsable response bodies;
- ``GET /control`` (the settings and request counters) and ``POST /control`` with
  ``{"latency_ms": 500, "mode": "tool", "reply_chars": 1600, "chunks": 100, "reset_stats": true}``
  to change them between scenarios;
- ``GET /health``.

In ``text`` mode every reply is text. In ``tool`` mode the model calls ``add_task`` once (titled
after the user's last message) whenever the request offers that tool, and answers with text once
the last message is a tool result: the shape of a real tool turn. ``?latency_ms=`` and ``?mode=``
on a request override the settings for that request alone.

A reply takes ``latency_ms`` whether it is streamed or not. With ``reply_chars`` above 0 a text
reply echoes the user's last message, repeated to that many characters. A request with
``"stream": true`` gets the provider's Server-Sent Events (OpenAI's ``chat.completion.chunk``\ s,
Anthropic's ``message_start`` … ``message_stop``): the opening event at once, then the text in
``chunks`` pieces spread evenly over the latency (the last one at ``latency_ms``), then the closing
events; a tool call comes whole at the end of the latency.

Run: ``python -m bench.fake_model --port 9100 --latency-ms 500 --mode tool [--reply-chars 1600 --chunks 100]``
(or set ``FAKE_MODEL_LATENCY_MS`` / ``FAKE_MODEL_MODE``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeAlias, cast
from urllib.parse import parse_qs

import msgspec

Mode: TypeAlias = Literal["text", "tool"]
MODES: Final[tuple[Mode, ...]] = ("text", "tool")
TOOL_NAME: Final = "add_task"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_LATENCY_MS: Final = 120_000.0
MAX_REPLY_CHARS: Final = 1_000_000
MAX_CHUNKS: Final = 100_000
TITLE_LENGTH: Final = 60
KEEP_ALIVE_SECONDS: Final = 120

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class BadRequest(Exception):
    """The request is not one the real provider would accept; answered with its error shape and status 400."""


@dataclass(slots=True)
class FakeModelConfig:
    """What the fake does for every request that does not override it."""

    latency_ms: float = 0.0
    mode: Mode = "text"
    reply_chars: int = 0
    """Above 0: text replies echo the user's last message, repeated to this many characters."""
    chunks: int = 1
    """A streamed text reply comes in this many pieces, spread over ``latency_ms``."""

    def updated(self, values: Mapping[str, Any]) -> FakeModelConfig:
        return FakeModelConfig(
            latency_ms=parse_latency(values.get("latency_ms", self.latency_ms)),
            mode=parse_mode(values.get("mode", self.mode)),
            reply_chars=parse_count("reply_chars", values.get("reply_chars", self.reply_chars), 0, MAX_REPLY_CHARS),
            chunks=parse_count("chunks", values.get("chunks", self.chunks), 1, MAX_CHUNKS),
        )


@dataclass(slots=True)
class FakeModelStats:
    """Requests served since the last reset: lets the orchestrator check how many model calls a turn made."""

    openai: int = 0
    anthropic: int = 0
    tool_calls: int = 0
    texts: int = 0
    streams: int = 0
    bad_requests: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model decided to say, before it is dressed in a provider's wire format."""

    text: str
    tool_title: str | None = None
    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return max(1, len(self.text) // 4) + (8 if self.tool_title is not None else 0)


def parse_latency(value: object) -> float:
    try:
        latency = float(cast(Any, value))
    except (TypeError, ValueError):
        raise BadRequest(f"latency_ms must be a number, not {value!r}") from None
    if not math.isfinite(latency) or not 0 <= latency <= MAX_LATENCY_MS:
        raise BadRequest(f"latency_ms must be between 0 and {MAX_LATENCY_MS:g}")
    return latency


def parse_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number between {low} and {high}, not {value!r}")
    return value


def parse_mode(value: object) -> Mode:
    if value not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, not {value!r}")
    return value


def _text_of(content: object) -> str:
    """The text of a message's content in either wire format: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _title_from(text: str) -> str:
    words = " ".join(text.split())
    return words[:TITLE_LENGTH].rstrip() or "Benchmark task"


def _offers_tool(tools: object, *, openai: bool) -> bool:
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        spec = tool.get("function") if openai else tool
        if isinstance(spec, dict) and spec.get("name") == TOOL_NAME:
            return True
    return False


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text_of(message.get("content"))
            if text:
                return text
    return ""


def echo(text: str, length: int) -> str:
    """``text`` repeated (words kept apart by a space) and cut to exactly ``length`` characters."""
    words = " ".join(text.split()) or "Benchmark reply"
    return ((words + " ") * (length // (len(words) + 1) + 1))[:length]


def decide(
    mode: Mode,
    *,
    last_is_tool_result: bool,
    offers_tool: bool,
    user_text: str,
    prompt_tokens: int,
    reply_chars: int = 0,
) -> Reply:
    """The fake model's whole mind: call the tool once per user message in tool mode, else answer."""
    if mode == "tool" and offers_tool and not last_is_tool_result:
        return Reply(text="", tool_title=_title_from(user_text), prompt_tokens=prompt_tokens)
    if last_is_tool_result:
        return Reply(text="Done: I added that task to your list.", prompt_tokens=prompt_tokens)
    if reply_chars > 0:
        return Reply(text=echo(user_text, reply_chars), prompt_tokens=prompt_tokens)
    return Reply(text=f"Noted: {_title_from(user_text)}. Anything else?", prompt_tokens=prompt_tokens)


def split_text(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` consecutive parts as even as can be (fewer when the text is shorter)."""
    count = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), count)
    parts, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def _messages_of(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model is required")
    return messages


def openai_reply(body: Mapping[str, Any], config: FakeModelConfig, prompt_tokens: int) -> tuple[Reply, dict[str, Any]]:
    """A chat completion exactly as OpenAI returns it (non-streaming)."""
    messages = _messages_of(body)
    last = messages[-1]
    reply = decide(
        config.mode,
        last_is_tool_result=isinstance(last, dict) and last.get("role") == "tool",
        offers_tool=_offers_tool(body.get("tools"), openai=True),
        user_text=_last_user_text(messages),
        prompt_tokens=prompt_tokens,
        reply_chars=config.reply_chars,
    )
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if reply.tool_title is not None:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": _encode({"title": reply.tool_title}).decode()},
            }
        ]
        finish_reason = "tool_calls"
    else:
        message["content"] = reply.text
        finish_reason = "stop"
    completion = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake_model",
    }
    return reply, completion


def _is_tool_result(message: object) -> bool:
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def anthropic_reply(
    body: Mapping[str, Any], config: FakeModelConfig, prompt_tokens: int
) -> tuple[Reply, dict[str, Any]]:
    """A message exactly as Anthropic's Messages API returns it (non-streaming)."""
    messages = _messages_of(body)
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise BadRequest("max_tokens: Field required")
    last = messages[-1]
    last_is_tool_result = _is_tool_result(last)
    user_text = "" if last_is_tool_result else _last_user_text(messages)
    reply = decide(
        config.mode,
        last_is_tool_result=last_is_tool_result,
        offers_tool=_offers_tool(body.get("tools"), openai=False),
        user_text=user_text,
        prompt_tokens=prompt_tokens,
        reply_chars=config.reply_chars,
    )
    content: list[dict[str, Any]]
    if reply.tool_title is not None:
        content = [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": TOOL_NAME,
                "input": {"title": reply.tool_title},
            }
        ]
        stop_reason = "tool_use"
    else:
        content = [{"type": "text", "text": reply.text}]
        stop_reason = "end_turn"
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": reply.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }
    return reply, message


@dataclass(frozen=True, slots=True)
class StreamedReply:
    """A reply as its provider's Server-Sent Events: what is sent at once, spread over the latency, and at the end."""

    opening: bytes
    pieces: list[bytes]
    closing: bytes


def _sse(data: object, event: str | None = None) -> bytes:
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + _encode(data) + b"\n\n"


def openai_stream(body: Mapping[str, Any], completion: Mapping[str, Any], reply: Reply, chunks: int) -> StreamedReply:
    """``completion`` as OpenAI streams it: ``chat.completion.chunk`` events, then ``data: [DONE]``."""
    base = {key: completion[key] for key in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice]})

    [choice] = completion["choices"]
    opening = chunk({"role": "assistant", "content": "", "refusal": None})
    if reply.tool_title is not None:
        [call] = choice["message"]["tool_calls"]
        named = {"index": 0, "id": call["id"], "type": "function", "function": {**call["function"], "arguments": ""}}
        arguments = {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
        pieces = [chunk({"tool_calls": [named]}) + chunk({"tool_calls": [arguments]})]
    else:
        pieces = [chunk({"content": text}) for text in split_text(reply.text, chunks)]
    closing = chunk({}, choice["finish_reason"])
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        closing += _sse({**base, "choices": [], "usage": completion["usage"]})
    return StreamedReply(opening, pieces, closing + b"data: [DONE]\n\n")


def anthropic_stream(body: Mapping[str, Any], message: Mapping[str, Any], reply: Reply, chunks: int) -> StreamedReply:
    """``message`` as Anthropic streams it: ``message_start``, one content block's deltas, ``message_stop``."""
    [block] = message["content"]
    usage = message["usage"]
    started = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    opening = _sse({"type": "message_start", "message": started}, "message_start")

    def delta(piece: dict[str, Any]) -> bytes:
        return _sse({"type": "content_block_delta", "index": 0, "delta": piece}, "content_block_delta")

    if block["type"] == "tool_use":
        empty: dict[str, Any] = {**block, "input": {}}
        pieces = [delta({"type": "input_json_delta", "partial_json": _encode(block["input"]).decode()})]
    else:
        empty = {"type": "text", "text": ""}
        pieces = [delta({"type": "text_delta", "text": text}) for text in split_text(reply.text, chunks)]
    opening += _sse({"type": "content_block_start", "index": 0, "content_block": empty}, "content_block_start")
    closing = (
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        + _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            "message_delta",
        )
        + _sse({"type": "message_stop"}, "message_stop")
    )
    return StreamedReply(opening, pieces, closing)


def openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass(slots=True)
class FakeModelApp:
    """The ASGI app. Holds its settings and counters; one instance per process."""

    config: FakeModelConfig = field(default_factory=FakeModelConfig)
    stats: FakeModelStats = field(default_factory=FakeModelStats)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/v1/chat/completions" and method == "POST":
            await self._provider(
                scope, receive, send, openai_reply, openai_stream, openai_error, request_id_header=b"x-request-id"
            )
            self.stats.openai += 1
        elif path == "/v1/messages" and method == "POST":
            await self._provider(
                scope,
                receive,
                send,
                anthropic_reply,
                anthropic_stream,
                anthropic_error,
                request_id_header=b"request-id",
            )
            self.stats.anthropic += 1
        elif path == "/control" and method in ("GET", "POST"):
            await self._control(method, receive, send)
        elif path == "/health" and method == "GET":
            await _respond(send, 200, {"status": "ok"})
        else:
            error = anthropic_error if path == "/v1/messages" else openai_error
            await _respond(send, 404 if method in ("GET", "POST") else 405, error(f"No route {method} {path}"))

    async def _provider(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        answer: Callable[[Mapping[str, Any], FakeModelConfig, int], tuple[Reply, dict[str, Any]]],
        streamed: Callable[[Mapping[str, Any], Mapping[str, Any], Reply, int], StreamedReply],
        error: Callable[[str], dict[str, Any]],
        *,
        request_id_header: bytes,
    ) -> None:
        try:
            raw = await _read_body(receive)
            body = _decode(raw)
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            config = self._request_config(scope)
            reply, payload = answer(body, config, len(raw) // 4)
        except (BadRequest, msgspec.DecodeError) as problem:
            self.stats.bad_requests += 1
            await _respond(send, 400, error(str(problem)))
            return
        if reply.tool_title is not None:
            self.stats.tool_calls += 1
        else:
            self.stats.texts += 1
        request_id = (request_id_header, f"req_{uuid.uuid4().hex}".encode())
        if body.get("stream") is True:
            self.stats.streams += 1
            await _stream(send, streamed(body, payload, reply, config.chunks), config.latency_ms, [request_id])
            return
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        await _respond(send, 200, payload, extra_headers=[request_id])

    def _request_config(self, scope: Scope) -> FakeModelConfig:
        """The settings, with the request's ``?latency_ms=`` and ``?mode=`` in place of theirs."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        overrides = {name: values[-1] for name, values in query.items() if name in ("latency_ms", "mode")}
        return self.config.updated(overrides) if overrides else self.config

    async def _control(self, method: str, receive: Receive, send: Send) -> None:
        if method == "POST":
            try:
                values = _decode(await _read_body(receive))
                if not isinstance(values, dict):
                    raise BadRequest("the control body must be a JSON object")
                self.config = self.config.updated(values)
            except (BadRequest, msgspec.DecodeError) as problem:
                await _respond(send, 400, {"detail": str(problem)})
                return
            if values.get("reset_stats"):
                self.stats = FakeModelStats()
        await _respond(send, 200, {"config": asdict(self.config), "stats": asdict(self.stats)})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest("request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _stream(
    send: Send, reply: StreamedReply, latency_ms: float, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    """The opening events at once, the pieces on an even schedule ending at ``latency_ms``, then the closing ones.

    The schedule is kept against the clock, so time spent sending does not add up over hundreds of pieces.
    """
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers + extra_headers})
    await send({"type": "http.response.body", "body": reply.opening, "more_body": True})
    loop = asyncio.get_running_loop()
    began, interval = loop.time(), latency_ms / 1000 / max(1, len(reply.pieces))
    for index, piece in enumerate(reply.pieces, start=1):
        delay = began + index * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": reply.closing})


async def _respond(
    send: Send, status: int, payload: object, *, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = _encode(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.fake_model", description="A fake OpenAI/Anthropic server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=float(os.environ.get("FAKE_MODEL_LATENCY_MS", "0")))
    parser.add_argument("--mode", choices=MODES, default=os.environ.get("FAKE_MODEL_MODE", "text"))
    parser.add_argument("--reply-chars", type=int, default=0, help="text replies echo the user to this length")
    parser.add_argument("--chunks", type=int, default=1, help="pieces of a streamed text reply")
    args = parser.parse_args(argv)
    app = FakeModelApp(
        FakeModelConfig().updated(
            {"latency_ms": args.latency_ms, "mode": args.mode, "reply_chars": args.reply_chars, "chunks": args.chunks}
        )
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # Longer than any client keeps an idle connection (httpx: 5 s), as a provider's load balancer does:
        # with uvicorn's own 5 s the server can close a connection just as a client reuses it, and the
        # servers under test (which run with retries off) would report a failed model call.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


if __name__ == "__main__":
    main()
