"""AnthropicChatAgent.stream against the Messages API's streaming wire format (``stream: true``).

The bodies are the documented event sequence: ``message_start``, ``content_block_start``,
``ping``, ``content_block_delta`` with ``text_delta`` or ``input_json_delta`` pieces,
``content_block_stop``, ``message_delta`` (the stop reason), ``message_stop``; and an
``error`` event mid-stream. Requests go through httpx2, intercepted by ``httpx2_mock``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import respx

from chatcore.adapters.anthropic.agent import AnthropicChatAgent
from chatcore.errors import AgentUnavailable
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    AgentStreamEvent,
    ChatMessage,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

API_KEY = "sk-ant-test-SECRET123"
BASE_URL = "https://fake-anthropic.test"
MESSAGES_URL = f"{BASE_URL}/v1/messages"
MODEL = "claude-sonnet-4-6"
ADD_TASK = ToolSpec(
    name="add_task",
    description="Add a task to the user's list.",
    parameters={"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
)
USAGE = {"input_tokens": 472, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def sse(*events: dict[str, Any]) -> bytes:
    """An Anthropic event stream: ``event:`` names the type, ``data:`` carries the JSON."""
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def message_start() -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": USAGE,
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_end(stop_reason: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
        {"type": "message_stop"},
    ]


PING = {"type": "ping"}

TEXT_STREAM = sse(
    message_start(),
    block_start(0, {"type": "text", "text": ""}),
    PING,
    text_delta(0, "You have"),
    text_delta(0, " 2 pending"),
    text_delta(0, " tasks."),
    block_stop(0),
    *message_end("end_turn"),
)

TOOL_STREAM = sse(
    message_start(),
    block_start(0, {"type": "text", "text": ""}),
    text_delta(0, "Adding both."),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01milk", "name": "add_task", "input": {}}),
    json_delta(1, ""),
    json_delta(1, '{"title": "Bu'),
    json_delta(1, 'y milk"}'),
    block_stop(1),
    block_start(2, {"type": "tool_use", "id": "toolu_02eggs", "name": "add_task", "input": {}}),
    json_delta(2, '{"title": "Buy eggs"}'),
    block_stop(2),
    *message_end("tool_use"),
)


def request() -> AgentRequest:
    return AgentRequest("You are a todo assistant.", (ChatMessage.user("Add milk and eggs"),), (ADD_TASK,))


@pytest.fixture
async def agent() -> AsyncIterator[AnthropicChatAgent]:
    agent = AnthropicChatAgent(model=MODEL, api_key=API_KEY, base_url=BASE_URL, max_retries=0)
    yield agent
    await agent.aclose()


def event_stream(body: bytes) -> dict[str, Any]:
    return {"status_code": 200, "content": body, "headers": {"content-type": "text/event-stream"}}


async def collect(agent: AnthropicChatAgent) -> list[AgentStreamEvent]:
    return [event async for event in agent.stream(request())]


async def test_text_deltas_then_the_whole_response(httpx2_mock: respx.Router, agent: AnthropicChatAgent) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(**event_stream(TEXT_STREAM))

    events = await collect(agent)

    assert events == [
        TextDelta("You have"),
        TextDelta(" 2 pending"),
        TextDelta(" tasks."),
        AgentResponse("You have 2 pending tasks.", (), "end_turn", Usage(472, 89), MODEL),
    ]


async def test_input_json_deltas_are_assembled_into_tool_calls(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(**event_stream(TOOL_STREAM))

    events = await collect(agent)

    assert events[0] == TextDelta("Adding both.")
    assert events[1] == ToolCallDelta(0, id="toolu_01milk", name="add_task")
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert "".join(d.arguments for d in calls if d.index == 0) == '{"title": "Buy milk"}'
    assert [d.id for d in calls if d.id] == ["toolu_01milk", "toolu_02eggs"]
    assert events[-1] == AgentResponse(
        "Adding both.",
        (
            ToolCall("toolu_01milk", "add_task", {"title": "Buy milk"}),
            ToolCall("toolu_02eggs", "add_task", {"title": "Buy eggs"}),
        ),
        "tool_use",
        Usage(472, 89),
        MODEL,
    )


async def test_usage_is_message_starts_input_with_its_cache_parts_and_message_deltas_output(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    """``message_start`` carries the input (``input_tokens`` without the cache's reads and writes) and
    ``message_delta`` the final, cumulative ``output_tokens``."""
    start = message_start()
    start["message"]["usage"] = {
        "input_tokens": 50,
        "cache_creation_input_tokens": 248,
        "cache_read_input_tokens": 1800,
        "output_tokens": 1,
    }
    body = sse(start, block_start(0, {"type": "text", "text": ""}), text_delta(0, "Done."), block_stop(0))
    body += sse(*message_end("end_turn"))
    httpx2_mock.post(MESSAGES_URL).respond(**event_stream(body))

    events = await collect(agent)

    assert events[-1] == AgentResponse(
        "Done.", (), "end_turn", Usage(2098, 89, cached_read_tokens=1800, cache_write_tokens=248), MODEL
    )


async def test_an_error_event_keeps_the_usage_message_start_reported(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    """The input of a stream that failed after ``message_start`` was counted: the error carries it."""
    body = sse(
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "Hel"),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    httpx2_mock.post(MESSAGES_URL).respond(**event_stream(body))

    with pytest.raises(AgentUnavailable) as failed:
        await collect(agent)

    assert failed.value.detail == "Anthropic request failed: error in the reply stream (overloaded_error)"
    assert failed.value.usage == Usage(472, 2)


async def test_a_tool_input_cut_off_mid_json_is_not_run(httpx2_mock: respx.Router, agent: AnthropicChatAgent) -> None:
    body = sse(
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_01cut", "name": "add_task", "input": {}}),
        json_delta(0, '{"title": "Bu'),
        block_stop(0),
        *message_end("max_tokens"),
    )
    httpx2_mock.post(MESSAGES_URL).respond(**event_stream(body))

    events = await collect(agent)

    final = events[-1]
    assert isinstance(final, AgentResponse)
    assert final.tool_calls == ()
    assert final.stop_reason == "max_tokens"
