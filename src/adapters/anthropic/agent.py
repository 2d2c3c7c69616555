"""AnthropicChatAgent: the LLMAgent port on the Anthropic Messages API.

Everything Anthropic-shaped stays in this module: ``_map_messages`` and ``_map_tools`` build the
request, ``_map_response`` reads the reply; ``chatcore.adapters.providers.errors`` classifies what failed.
The Messages API is stricter than chat completions: roles must alternate starting with ``user``,
tool results travel as blocks inside a user message, and text blocks may not be empty; the
mapping below is where those rules are met. Timeouts and retries are the SDK's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import ClassVar, Literal, assert_never

import anthropic
from anthropic import AsyncAnthropic, omit
from anthropic.types import (
    ContentBlockParam,
    Message,
    MessageParam,
    TextBlock,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
)

from chatcore.adapters.providers.errors import SdkErrors, UnreadableReply, agent_error, failure_of
from chatcore.adapters.providers.sdk_agent import SdkAgent
from chatcore.errors import AgentError
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    JsonValue,
    Role,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)

logger = logging.getLogger("chatcore.adapters.anthropic")

PROVIDER = "anthropic"

INVALID_JSON_KEY = "_invalid_json"
"""The key under which tool input that is not a JSON object is passed on, so the tool's schema rejects it."""

CUT_OFF_REPLY = (
    "My reply was cut off before I could finish what I was doing, so I did not do it. "
    "Please try again, or ask for less at once."
)
"""The answer when the model stopped mid tool call and said nothing the user could read."""

_SDK_ERRORS = SdkErrors(
    timeout=anthropic.APITimeoutError, connection=anthropic.APIConnectionError, status=anthropic.APIStatusError
)


_Role = Literal["user", "assistant"]


class AnthropicChatAgent(SdkAgent[AsyncAnthropic]):
    """An LLMAgent on the Anthropic Messages API (settings: ``SdkAgent``).

    ``temperature`` is sent only when set: the 2.x SDK dropped it from ``messages.create`` (it goes
    in ``extra_body``) and recent models reject non-default values.
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
        tools = _map_tools(request.tools)
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=request.system_prompt or omit,
                messages=_map_messages(request.messages),
                tools=tools or omit,
                extra_body=None if self.temperature is None else {"temperature": self.temperature},
            )
        except anthropic.AnthropicError as error:
            raise _agent_error(error) from error
        return _map_response(message)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        """``complete`` through the SDK's stream helper: ``text_delta`` and ``input_json_delta`` pieces as they
        arrive, then the Message the SDK accumulated, read by ``_map_response``, so both paths answer alike.
        """
        tools = _map_tools(request.tools)
        calls: dict[int, int] = {}
        # content block index -> the tool call's index among this step's calls
        try:
            async with self._client.messages.stream(
                model=self.model,
                max_tokens=self.max_tokens,
                system=request.system_prompt or omit,
                messages=_map_messages(request.messages),
                tools=tools or omit,
                extra_body=None if self.temperature is None else {"temperature": self.temperature},
            ) as events:
                async for event in events:
                    if isinstance(event, anthropic.types.RawContentBlockStartEvent):
                        block = event.content_block
                        if isinstance(block, ToolUseBlock):
                            calls[event.index] = len(calls)
                            yield ToolCallDelta(calls[event.index], id=block.id, name=block.name)
                    elif isinstance(event, anthropic.types.RawContentBlockDeltaEvent):
                        delta = event.delta
                        if isinstance(delta, anthropic.types.TextDelta) and delta.text:
                            yield TextDelta(delta.text)
                        elif isinstance(delta, anthropic.types.InputJSONDelta) and event.index in calls:
                            yield ToolCallDelta(calls[event.index], arguments=delta.partial_json)
                message = await events.get_final_message()
        except anthropic.AnthropicError as error:
            raise _agent_error(error) from error
        except ValueError as error:  # the SDK could not parse a tool's streamed input as JSON
            raise agent_error(PROVIDER, UnreadableReply("unreadable tool input")) from error
        yield _map_response(message)


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


def _map_response(message: Message) -> AgentResponse:
    """Text blocks joined, ``tool_use`` blocks as calls; other blocks (thinking, server tools) are not ours.

    ``stop_reason`` decides whether the calls run: only ``tool_use`` means "run these and come back".
    A ``tool_use`` block in a reply that stopped for another reason (``max_tokens`` cut it off) may
    hold half its input, and running it would act on arguments the model never finished writing, so
    the calls are dropped and the reply ends the turn (with a sentence saying why when it has no text).
    """
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(id=block.id, name=block.name, arguments=_arguments(block.input)))
    answer = "".join(text)
    if calls and message.stop_reason != "tool_use":
        logger.warning(
            "anthropic reply stopped for %s with %d unfinished tool call(s); they are not run "
            "(raise CHATCORE_MAX_TOKENS if this is max_tokens)",
            message.stop_reason,
            len(calls),
            extra={"event": "agent_cut_off", "provider": PROVIDER, "stop_reason": message.stop_reason},
        )
        return AgentResponse(text=answer.strip() or CUT_OFF_REPLY, stop_reason=message.stop_reason)
    return AgentResponse(text=answer, tool_calls=tuple(calls), stop_reason=message.stop_reason)


def _arguments(value: object) -> dict[str, JsonValue]:
    """The API promises an object; anything else is handed on, as the OpenAI adapter does, for the tool to reject."""
    if isinstance(value, Mapping):
        return dict(value)
    return {INVALID_JSON_KEY: json.dumps(value, ensure_ascii=False, default=str)}


def _agent_error(error: BaseException) -> AgentError:
    """The domain error for an SDK error (``chatcore.adapters.providers.errors`` decides which)."""
    return agent_error(PROVIDER, failure_of(error, _SDK_ERRORS))
