"""AnthropicChatAgent: the LLMAgent port on the Anthropic Messages API.

Everything Anthropic-shaped stays in this module: ``_map_messages`` and ``_map_tools`` build the
request, ``_map_response`` reads the reply; ``chatcore.adapters.providers.errors`` classifies what failed.
The Messages API is stricter than chat completions: roles must alternate starting with ``user``,
tool results travel as blocks inside a user message, and text blocks may not be empty; the
mapping below is where those rules are met. Timeouts and retries are the SDK's own.

Requests go through the SDK client's ``post`` as ready JSON bytes (msgspec), so its retries, timeouts,
auth and error classes apply, and replies come back raw: a message is decoded by msgspec and read by
``_map_response`` as JSON, and a stream's events are split out by ``providers.sse`` and decoded into the
few Structs below, instead of a pydantic object per event and the SDK's accumulated ``Message``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, assert_never

import anthropic
import httpx2
import msgspec
from anthropic import AsyncAnthropic
from anthropic.types import (
    ContentBlockParam,
    MessageParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
)

from chatcore.adapters.providers import sse
from chatcore.adapters.providers.errors import SdkErrors, StreamFailure, UnreadableReply, agent_error, token_count
from chatcore.adapters.providers.sdk_agent import SdkAgent
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

logger = logging.getLogger("chatcore.adapters.anthropic")

PROVIDER = "anthropic"
MESSAGES_PATH: Final = "/v1/messages"

CUT_OFF_REPLY = (
    "My reply was cut off before I could finish what I was doing, so I did not do it. "
    "Please try again, or ask for less at once."
)
"""The answer when the model stopped mid tool call and said nothing the user could read."""


_Role = Literal["user", "assistant"]


class AnthropicChatAgent(SdkAgent[AsyncAnthropic]):
    """An LLMAgent on the Anthropic Messages API (settings: ``SdkAgent``).

    ``temperature`` is sent only when set: the 2.x SDK dropped it from ``messages.create`` and recent
    models reject non-default values.
    """

    provider: str = PROVIDER
    default_model: ClassVar[str] = "claude-sonnet-4-6"

    def _new_client(
        self, *, api_key: str | None, base_url: str | None, timeout_seconds: float, max_retries: int
    ) -> AsyncAnthropic:
        """Without any credential the SDK would fail every request with a TypeError; refused here instead."""
        client = AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_seconds,
            max_retries=max_retries,
            http_client=self._http,
        )
        if client.api_key is None and client.auth_token is None and client.credentials is None:
            raise ValueError("AnthropicChatAgent needs an API key: pass api_key or set ANTHROPIC_API_KEY")
        return client

    async def complete(self, request: AgentRequest) -> AgentResponse:
        try:
            response = await self._client.post(
                MESSAGES_PATH, content=self._body(request), cast_to=httpx2.Response, stream=False
            )
        except anthropic.AnthropicError as error:
            raise _agent_error(error) from error
        try:
            message = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise agent_error(PROVIDER, UnreadableReply("a response that is not JSON")) from None
        return _map_response(message, self.model)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """``complete`` with ``"stream": true``: ``text_delta`` and ``input_json_delta`` pieces as they arrive,
        then the events put back together into the message ``complete`` would have received, read by
        ``_map_response``, so both paths answer alike.
        """
        assembly = _EventAssembly()
        try:
            response = await self._client.post(
                MESSAGES_PATH,
                content=self._body(request, stream=True),
                cast_to=httpx2.Response,  # as it is, its body not yet read: read below, event by event
                stream=True,
            )
        except anthropic.AnthropicError as error:
            raise _agent_error(error) from error
        try:
            async for event in sse.events(response.aiter_bytes()):
                for delta in assembly.add(event):
                    yield delta
                if assembly.stopped:
                    break
        except httpx2.HTTPError as error:
            raise _agent_error(error) from error
        finally:
            await response.aclose()
        yield _map_response(assembly.message(), self.model)

    def _body(self, request: AgentRequest, *, stream: bool = False) -> bytes:
        """The Messages API request body as JSON bytes: the system prompt and tools only when there are any,
        the temperature only when set."""
        body: dict[str, object] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": _map_messages(request.messages),
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        tools = _map_tools(request.tools)
        if tools:
            body["tools"] = tools
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if stream:
            body["stream"] = True
        return msgspec.json.encode(body)


def _map_messages(messages: Sequence[ChatMessage]) -> list[MessageParam]:
    """The conversation as alternating user/assistant messages, starting with a user message.

    Everything before the first user message is dropped (an assistant reply, and the tool results
    answering it, that a history window cut loose). Consecutive messages of one role are merged, so
    several tool results, or tool results followed by the user's next words, form one user message.
    """
    merged: list[tuple[_Role, list[ContentBlockParam]]] = []
    for message in _from_first_user_message(messages):
        role, blocks = _map_message(message)
        if not blocks:
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, blocks))
    return [_message_param(role, blocks) for role, blocks in merged]


def _message_param(role: _Role, blocks: list[ContentBlockParam]) -> MessageParam:
    if role == "user":
        return {"role": "user", "content": blocks}
    return {"role": "assistant", "content": blocks}


def _from_first_user_message(messages: Sequence[ChatMessage]) -> Sequence[ChatMessage]:
    for index, message in enumerate(messages):
        if message.role is Role.USER:
            return messages[index:]
    return ()


def _map_message(message: ChatMessage) -> tuple[_Role, list[ContentBlockParam]]:
    match message.role:
        case Role.USER:
            return "user", _text_blocks(message.content)
        case Role.ASSISTANT:
            blocks = _text_blocks(message.content)
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.arguments)}
                for call in message.tool_calls
            )
            return "assistant", blocks
        case Role.TOOL:
            result: ToolResultBlockParam = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content,
            }
            if message.is_error:
                result["is_error"] = True
            return "user", [result]
        case _:
            assert_never(message.role)


def _text_blocks(text: str) -> list[ContentBlockParam]:
    """One text block, or none: the API rejects empty and whitespace-only text blocks."""
    block: TextBlockParam = {"type": "text", "text": text}
    return [block] if text.strip() else []


def _map_tools(tools: Sequence[ToolSpec]) -> list[ToolParam]:
    return [
        {"name": spec.name, "description": spec.description, "input_schema": dict(spec.parameters)} for spec in tools
    ]


def _map_response(message: object, configured_model: str) -> AgentResponse:
    """Text blocks joined, ``tool_use`` blocks as calls; other blocks (thinking, server tools) are not ours. The
    usage and the model name as the API reported them (the model asked for when it named none).

    ``stop_reason`` decides whether the calls run: only ``tool_use`` means "run these and come back".
    A ``tool_use`` block in a reply that stopped for another reason (``max_tokens`` cut it off) may
    hold half its input, and running it would act on arguments the model never finished writing, so
    the calls are dropped and the reply ends the turn (with a sentence saying why when it has no text).
    """
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise agent_error(PROVIDER, UnreadableReply("a response without content"))
    assert isinstance(message, dict)
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            calls.append(ToolCall(str(call_id or ""), str(name or ""), tool_arguments(block.get("input"))))
    stop_reason = message.get("stop_reason")
    stop_reason = stop_reason if isinstance(stop_reason, str) else None
    model = message.get("model")
    usage = _usage_of(message.get("usage"))
    model = model if isinstance(model, str) and model else configured_model
    answer = "".join(text)
    if calls and stop_reason != "tool_use":
        logger.warning(
            "anthropic reply stopped for %s with %d unfinished tool call(s); they are not run "
            "(raise CHATCORE_MAX_TOKENS if this is max_tokens)",
            stop_reason,
            len(calls),
            extra={"event": "agent_cut_off", "provider": PROVIDER, "stop_reason": stop_reason},
        )
        return AgentResponse(answer.strip() or CUT_OFF_REPLY, (), stop_reason, usage, model)
    return AgentResponse(answer, tuple(calls), stop_reason, usage, model)


def _usage_of(reported: object) -> Usage | None:
    """Anthropic's ``usage``: its ``input_tokens`` leave out the prompt cache's reads and writes, so the whole
    input is the three together; the cache parts are kept apart as well."""
    if not isinstance(reported, dict):
        return None
    cache_read = token_count(reported.get("cache_read_input_tokens"))
    cache_write = token_count(reported.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=token_count(reported.get("input_tokens")) + cache_read + cache_write,
        output_tokens=token_count(reported.get("output_tokens")),
        cached_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


_agent_error = SdkErrors(
    PROVIDER,
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
    usage_of=_usage_of,
)
"""The domain error for an SDK error (``chatcore.adapters.providers.errors`` decides which)."""


# --- the stream's events, as msgspec decodes them: only the fields the step needs ----------------------------


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None


class _BlockStart(msgspec.Struct):
    index: int
    content_block: _Block


class _Delta(msgspec.Struct):
    type: str
    text: str | None = None
    partial_json: str | None = None


class _BlockDelta(msgspec.Struct):
    index: int
    delta: _Delta


class _StartMessage(msgspec.Struct):
    model: str | None = None
    usage: dict[str, object] | None = None


class _MessageStart(msgspec.Struct):
    message: _StartMessage


class _StopReason(msgspec.Struct):
    stop_reason: str | None = None


class _MessageDelta(msgspec.Struct):
    delta: _StopReason | None = None
    usage: dict[str, object] | None = None


_BLOCK_START = msgspec.json.Decoder(_BlockStart)
_BLOCK_DELTA = msgspec.json.Decoder(_BlockDelta)
_MESSAGE_START = msgspec.json.Decoder(_MessageStart)
_MESSAGE_DELTA = msgspec.json.Decoder(_MessageDelta)


@dataclass(slots=True)
class _BlockPieces:
    """A content block as it streams in: text pieces, or a tool call's id, name and input JSON pieces."""

    type: str
    call_index: int = -1
    id: str = ""
    name: str = ""
    pieces: list[str] = field(default_factory=list)

    def block(self) -> dict[str, object]:
        if self.type == "text":
            return {"type": "text", "text": "".join(self.pieces)}
        # The input's JSON text as it streamed: ``_map_response`` reads it as ``complete`` reads an input object.
        return {"type": self.type, "id": self.id, "name": self.name, "input": "".join(self.pieces)}


@dataclass(slots=True)
class _EventAssembly:
    """The stream's events put back together into the message ``complete`` would have received."""

    model: str | None = None
    blocks: dict[int, _BlockPieces] = field(default_factory=dict)
    calls: int = 0
    stop_reason: str | None = None
    usage: dict[str, object] = field(default_factory=dict)
    stopped: bool = False

    def add(self, event: sse.Event) -> list[AgentStreamEvent]:
        """The deltas of one event. Raises the domain error for an ``error`` event or an unreadable one."""
        try:
            match event.name:
                case b"content_block_delta":
                    return self._delta(_BLOCK_DELTA.decode(event.data))
                case b"content_block_start":
                    return self._start(_BLOCK_START.decode(event.data))
                case b"message_start":
                    started = _MESSAGE_START.decode(event.data).message
                    self.model = started.model
                    self.usage = dict(started.usage or {})
                case b"message_delta":
                    delta = _MESSAGE_DELTA.decode(event.data)
                    if delta.delta is not None:
                        self.stop_reason = delta.delta.stop_reason
                    # The counts in message_delta are cumulative: they replace message_start's.
                    self.usage.update({k: v for k, v in (delta.usage or {}).items() if v is not None})
                case b"message_stop":
                    self.stopped = True
                case b"error":
                    raise agent_error(
                        PROVIDER, StreamFailure(msgspec.json.decode(event.data)), usage=self._usage_so_far()
                    )
                case _:  # ping, content_block_stop, and event types added later
                    pass
        except msgspec.DecodeError as error:
            raise agent_error(PROVIDER, UnreadableReply("a stream event it could not read")) from error
        return []

    def _start(self, start: _BlockStart) -> list[AgentStreamEvent]:
        block = start.content_block
        pieces = self.blocks[start.index] = _BlockPieces(block.type)
        if block.type == "text":
            if block.text:
                pieces.pieces.append(block.text)
                return [TextDelta(block.text)]
        elif block.type == "tool_use":
            pieces.call_index, self.calls = self.calls, self.calls + 1
            pieces.id, pieces.name = block.id or "", block.name or ""
            return [ToolCallDelta(pieces.call_index, id=pieces.id, name=pieces.name)]
        return []

    def _delta(self, event: _BlockDelta) -> list[AgentStreamEvent]:
        pieces = self.blocks.get(event.index)
        delta = event.delta
        if pieces is None:
            return []
        if delta.type == "text_delta" and delta.text:
            pieces.pieces.append(delta.text)
            return [TextDelta(delta.text)]
        if delta.type == "input_json_delta" and pieces.type == "tool_use":
            pieces.pieces.append(delta.partial_json or "")
            return [ToolCallDelta(pieces.call_index, arguments=delta.partial_json or "")]
        return []

    def _usage_so_far(self) -> Usage | None:
        return _usage_of(self.usage) if self.usage else None

    def message(self) -> dict[str, object]:
        """The message as ``complete`` would have read it: text and ``tool_use`` blocks, stop reason, usage."""
        content = [pieces.block() for _, pieces in sorted(self.blocks.items()) if pieces.type in ("text", "tool_use")]
        return {
            "type": "message",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "usage": self.usage or None,
        }
