"""OpenAIChatAgent: the LLMAgent port on OpenAI chat completions, and on any server that speaks them.

Everything OpenAI-shaped stays in this module: ``_map_messages`` and ``_map_tools`` build the
request, ``_map_response`` reads the reply; ``chatcore.adapters.providers.errors`` classifies what failed.
``base_url`` (or ``OPENAI_BASE_URL``) points it at an OpenAI-compatible server such as Ollama,
vLLM or llama.cpp. Timeouts and retries are the SDK's own, configured on the client.

A turn's request is first sent on the SDK client's own HTTP connection pool, with the headers the
SDK sends, and a 2xx reply is read straight from its JSON: the SDK's per-request machinery (request
options as pydantic models copied per attempt, header merging, URL joining, its response wrapper)
cost more CPU than the HTTP exchange itself (docs/performance.md). Anything else goes the SDK's way:
a non-retryable status becomes the SDK's own error class, and a retryable one (or a connection error)
is retried by the SDK's ``post`` with the rest of the retry budget, after the SDK's first backoff.
An ``AsyncOpenAI`` passed in by the caller is used through the SDK only.

A streamed step is sent by the SDK's ``post`` too (its retries, timeouts and error classes apply until
the stream begins) but its response is taken raw: the events are split out of the body by
``providers.sse`` and each chunk is decoded by msgspec into the few Structs below, instead of a pydantic
``ChatCompletionChunk`` per chunk (two thirds of a streamed step's CPU went there).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

import httpx2
import msgspec
import openai
from openai import AsyncOpenAI, RequestOptions
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)

from chatcore.adapters.providers import sse
from chatcore.adapters.providers.errors import (
    SdkErrors,
    StreamFailure,
    UnreadableReply,
    agent_error,
    safe_token,
    token_count,
)
from chatcore.adapters.providers.sdk_agent import SdkAgent
from chatcore.adapters.providers.tool_arguments import INVALID_JSON_KEY as INVALID_JSON_KEY
from chatcore.adapters.providers.tool_arguments import tool_arguments
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    Role,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

logger = logging.getLogger("chatcore.adapters.openai")

PROVIDER = "openai"
COMPLETIONS_PATH = "/chat/completions"
_REQUEST_OPTIONS: RequestOptions = {"security": {"bearer_auth": True}}
"""What ``chat.completions.create`` passes to ``post``: the API key as a bearer token."""
INITIAL_RETRY_DELAY_SECONDS = 0.5
MAX_RETRY_AFTER_SECONDS = 120.0
"""The SDK's first backoff and the longest Retry-After it honours (``openai._constants``)."""

_JSON_TEXT = msgspec.json.Encoder()
"""Tool-call arguments as the JSON text OpenAI's wire format carries them (compact UTF-8, like the SDK's)."""

STREAM_OPTIONS = {"include_usage": True}
"""Sent with a streamed request: the stream's last chunk (without choices) then carries the usage."""


class OpenAIChatAgent(SdkAgent[AsyncOpenAI]):
    """An LLMAgent on the OpenAI chat completions API (settings: ``SdkAgent``).

    With its own client (no ``client`` passed), a turn's request is sent on that client's HTTP
    connection pool directly (see the module); a caller's ``AsyncOpenAI`` is used through the SDK only.
    """

    provider: str = PROVIDER
    default_model: ClassVar[str] = "gpt-4o-mini"

    def _new_client(
        self, *, api_key: str | None, base_url: str | None, timeout_seconds: float, max_retries: int
    ) -> AsyncOpenAI:
        try:
            return AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout_seconds,
                max_retries=max_retries,
                http_client=self._http,
            )
        except openai.OpenAIError as error:  # raised for missing credentials
            raise ValueError(
                "OpenAIChatAgent needs an API key: pass api_key or set OPENAI_API_KEY "
                "(a local OpenAI-compatible server accepts any placeholder)"
            ) from error

    @functools.cached_property
    def _completions_url(self) -> str:
        """Absolute, so the SDK need not join it onto base_url on every request."""
        return str(self._client.base_url).rstrip("/") + COMPLETIONS_PATH

    async def complete(self, request: AgentRequest) -> AgentResponse:
        body = self._body(request)
        if self._http is None:  # a caller's client: everything through the SDK
            return await self._complete_through_sdk(body, _REQUEST_OPTIONS)
        response: httpx2.Response | None = None
        try:
            response = await self._http.post(
                self._completions_url, content=body, headers=self._headers, timeout=self._client.timeout
            )
        except httpx2.TimeoutException as error:
            failure: openai.OpenAIError = openai.APITimeoutError(request=error.request)
        except httpx2.TransportError as error:
            failure = openai.APIConnectionError(request=error.request)
        else:
            if response.is_success:
                return _map_response(_json_of(response), self.model)
            failure = self._client._make_status_error_from_response(response)
            if not self._client._should_retry(response):
                raise _agent_error(failure) from failure
        if self._max_retries == 0:
            raise _agent_error(failure) from failure
        # The SDK's own retries take over, as if this had been their first attempt.
        await asyncio.sleep(self._first_retry_delay(response))
        return await self._complete_through_sdk(body, {**_REQUEST_OPTIONS, "max_retries": self._max_retries - 1})

    async def _complete_through_sdk(self, body: bytes, options: RequestOptions) -> AgentResponse:
        try:
            # ``object``: the JSON body as parsed, without building the SDK's pydantic models from it.
            completion = await self._client.post(self._completions_url, content=body, cast_to=object, options=options)
        except openai.OpenAIError as error:
            raise _agent_error(error) from error
        return _map_response(completion, self.model)

    def _first_retry_delay(self, response: httpx2.Response | None) -> float:
        """What the SDK waits before its first retry: the server's Retry-After (read by the SDK, honoured up to
        two minutes), else 0.5 s less up to a quarter of jitter."""
        if response is not None:
            delay = self._client._parse_retry_after_header(response.headers)
            if delay is not None and 0 < delay <= MAX_RETRY_AFTER_SECONDS:
                return delay
        return INITIAL_RETRY_DELAY_SECONDS * (1 - 0.25 * random.random())  # noqa: S311  # jitter, not a secret

    @functools.cached_property
    def _headers(self) -> dict[str, str]:
        """What the SDK sends with every request (auth, content type, its client headers), worked out once."""
        headers = {k: v for k, v in self._client.default_headers.items() if isinstance(v, str)}
        return headers | self._client.auth_headers

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """``complete`` with ``stream=True``: text and tool-call argument deltas as the chunks arrive, then the chunks
        put back together into a completion's JSON and read by ``_map_response``, so both paths answer alike.
        ``stream_options.include_usage`` asks for the usage, which the last chunk (without choices) carries.
        """
        assembly = _ChunkAssembly()
        try:
            response = await self._client.post(
                self._completions_url,
                content=self._body(request, stream=True),
                cast_to=httpx2.Response,  # as it is, its body not yet read: read below, chunk by chunk
                options=_REQUEST_OPTIONS,
                stream=True,
            )
        except openai.OpenAIError as error:
            raise _agent_error(error) from error
        try:
            async for event in sse.events(response.aiter_bytes()):
                if event.data.startswith(b"[DONE]"):
                    break
                for delta in assembly.add(_chunk(event.data)):
                    yield delta
        except httpx2.HTTPError as error:
            raise _agent_error(error) from error
        finally:
            await response.aclose()
        yield _map_response(assembly.completion(), self.model)

    def _body(self, request: AgentRequest, *, stream: bool = False) -> bytes:
        """The chat completions request body, serialised as the SDK would (compact UTF-8 JSON).

        It goes through the SDK's low-level ``post`` as ready bytes rather than through
        ``chat.completions.create``: the SDK's retries, timeouts, auth and error classes all still
        apply, but it does not walk every message and tool schema on each call, first to
        ``transform`` them against the TypedDict annotations and then to copy them into its request
        options, only to send the same plain values (together a fifth of a turn's CPU).
        """
        body: dict[str, object] = {
            "model": self.model,
            "messages": _map_messages(request.system_prompt, request.messages),
            "max_tokens": self.max_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        tools = _map_tools(request.tools)
        if tools:
            body["tools"] = tools
        if stream:
            body["stream"] = True
            body["stream_options"] = STREAM_OPTIONS
        return msgspec.json.encode(body)  # compact UTF-8, like the SDK's, at a tenth of json.dumps' cost


def _map_messages(system_prompt: str, messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
    """The system prompt as the first message, then the conversation in order."""
    mapped: list[ChatCompletionMessageParam] = []
    if system_prompt:
        mapped.append({"role": "system", "content": system_prompt})
    mapped.extend(_map_message(message) for message in messages)
    return mapped


def _map_message(message: ChatMessage) -> ChatCompletionMessageParam:
    match message.role:
        case Role.USER:
            return {"role": "user", "content": message.content}
        case Role.ASSISTANT:
            # Content may be null only beside tool calls; an empty reply is sent as "".
            assistant: ChatCompletionAssistantMessageParam = {
                "role": "assistant",
                "content": message.content or (None if message.tool_calls else ""),
            }
            if message.tool_calls:
                assistant["tool_calls"] = [_map_tool_call(call) for call in message.tool_calls]
            return assistant
        case Role.TOOL:
            return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
        case _:
            assert_never(message.role)


def _map_tool_call(call: ToolCall) -> ChatCompletionMessageFunctionToolCallParam:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": _JSON_TEXT.encode(dict(call.arguments)).decode()},
    }


def _map_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    return [
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": dict(spec.parameters)},
        }
        for spec in tools
    ]


def _json_of(response: httpx2.Response) -> object:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise agent_error(PROVIDER, UnreadableReply("a response that is not JSON")) from None


def _map_response(completion: object, configured_model: str) -> AgentResponse:
    """The first choice's text (or refusal) and function calls; ``finish_reason`` becomes ``stop_reason``; the
    usage and the model name as the server reported them (the model asked for when it named none).

    ``completion`` is the response's JSON, read as leniently as the SDK's own models would: compatible
    servers omit fields, send nulls, or send tool-call arguments as an object instead of its JSON text.
    """
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise agent_error(PROVIDER, UnreadableReply("a response without choices"))
    assert isinstance(completion, dict)
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    calls: list[ToolCall] = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and call.get("type", "function") == "function":
            calls.append(
                ToolCall(
                    # Some compatible servers leave ids empty; the result must still find its call.
                    id=call.get("id") or f"call_{uuid.uuid4().hex}",
                    name=function.get("name") or "",
                    arguments=tool_arguments(function.get("arguments") or ""),
                )
            )
        else:
            kind = call.get("type") if isinstance(call, dict) else None
            logger.warning("ignoring a %s tool call: only function tools are offered", safe_token(kind) or "malformed")
    model = completion.get("model")
    return AgentResponse(
        text=message.get("content") or message.get("refusal") or "",
        tool_calls=tuple(calls),
        stop_reason=choice.get("finish_reason"),
        usage=_usage_of(completion.get("usage")),
        model=model if isinstance(model, str) and model else configured_model,
    )


def _usage_of(reported: object) -> Usage | None:
    """OpenAI's ``usage``: ``prompt_tokens`` is all the input, its cached part in ``prompt_tokens_details``;
    OpenAI writes its prompt cache without charging for it, so nothing is a cache write."""
    if not isinstance(reported, dict):
        return None
    details = reported.get("prompt_tokens_details")
    return Usage(
        input_tokens=token_count(reported.get("prompt_tokens")),
        output_tokens=token_count(reported.get("completion_tokens")),
        cached_read_tokens=token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
    )


_agent_error = SdkErrors(
    PROVIDER,
    timeout=openai.APITimeoutError,
    connection=openai.APIConnectionError,
    status=openai.APIStatusError,
    usage_of=_usage_of,
)
"""The domain error for an SDK error (``chatcore.adapters.providers.errors`` decides which)."""


# --- the streamed chunks, as msgspec decodes them: only the fields the step needs ----------------------------


class _FunctionPiece(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _CallPiece(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionPiece | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_CallPiece] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    """A ``chat.completion.chunk`` (or the ``{"error": ...}`` a stream fails with)."""

    id: str | None = None
    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: dict[str, object] | None = None
    error: dict[str, object] | None = None


_CHUNK = msgspec.json.Decoder(_Chunk)


def _chunk(data: bytes) -> _Chunk:
    """One event's chunk. Raises the domain error when it is not one, or when it is the stream's error."""
    try:
        chunk = _CHUNK.decode(data)
    except msgspec.DecodeError as error:  # not JSON, or not a chunk's shape
        raise agent_error(PROVIDER, UnreadableReply("a stream chunk it could not read")) from error
    if chunk.error is not None:
        raise agent_error(PROVIDER, StreamFailure({"error": chunk.error}))
    return chunk


@dataclass(slots=True)
class _CallPieces:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _ChunkAssembly:
    """Chat completion chunks put back together: the first choice's text, refusal and tool calls (by index)."""

    id: str = ""
    model: str = ""
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _CallPieces] = field(default_factory=dict)
    finish_reason: str | None = None
    had_choice: bool = False
    usage: dict[str, object] | None = None

    def add(self, chunk: _Chunk) -> list[AgentStreamEvent]:
        """The deltas of one chunk; a chunk without choices (the usage) only carries metadata."""
        self.id = self.id or chunk.id or ""
        self.model = self.model or chunk.model or ""
        if chunk.usage is not None:
            self.usage = chunk.usage
        events: list[AgentStreamEvent] = []
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            self.had_choice = True
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self.text.append(delta.content)
                    events.append(TextDelta(delta.content))
                if delta.refusal:
                    self.refusal.append(delta.refusal)
                    events.append(TextDelta(delta.refusal))
                for piece in delta.tool_calls or ():
                    call = self.calls.setdefault(piece.index, _CallPieces())
                    name = piece.function.name if piece.function else None
                    arguments = (piece.function.arguments or "") if piece.function else ""
                    # The id and name come with a call's first chunk; some compatible servers repeat them.
                    call.id = call.id or piece.id
                    call.name = call.name or name
                    call.arguments.append(arguments)
                    events.append(ToolCallDelta(piece.index, id=piece.id, name=name, arguments=arguments))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def completion(self) -> dict[str, object]:
        """What the same request without ``stream`` would have returned (no choices when the stream had none)."""
        tool_calls = [
            {
                "id": call.id or "",
                "type": "function",
                "function": {"name": call.name or "", "arguments": "".join(call.arguments)},
            }
            for _, call in sorted(self.calls.items())
        ]
        message = {
            "role": "assistant",
            "content": "".join(self.text) or None,
            "refusal": "".join(self.refusal) or None,
            "tool_calls": tool_calls or None,
        }
        choices = (
            [{"index": 0, "finish_reason": self.finish_reason or "stop", "logprobs": None, "message": message}]
            if self.had_choice
            else []
        )
        return {
            "id": self.id,
            "choices": choices,
            "model": self.model,
            "object": "chat.completion",
            "usage": self.usage,
        }
