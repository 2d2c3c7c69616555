"""OpenAIChatAgent.stream against OpenAI's streaming wire format: ``stream=True`` chunks as Server-Sent Events.

The bodies are chat.completion.chunk events as OpenAI sends them (text deltas; tool calls whose
``arguments`` arrive in pieces, two calls interleaved by ``index``; a usage chunk without choices;
``data: [DONE]``). The SDK sends through httpx2, intercepted by the ``httpx2_mock`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import respx

from chatcore.adapters.openai.agent import OpenAIChatAgent
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

API_KEY = "sk-test-SECRET123"
BASE_URL = "https://fake-openai.test/v1"
COMPLETIONS_URL = f"{BASE_URL}/chat/completions"
ADD_TASK = ToolSpec(
    name="add_task",
    description="Add a task to the user's list.",
    parameters={"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
)
SNAPSHOT = "gpt-4o-mini-2024-07-18"
HEAD = {
    "id": "chatcmpl-BAl2fBLhHmDDGkXR9HdeNtwWpYZ3m",
    "object": "chat.completion.chunk",
    "created": 1741882085,
    "model": SNAPSHOT,
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def sse(*chunks: dict[str, Any]) -> bytes:
    """An OpenAI event stream: one ``data:`` line per chunk, then ``[DONE]``."""
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


TEXT_STREAM = sse(
    chunk({"role": "assistant", "content": "", "refusal": None}),
    chunk({"content": "You have"}),
    chunk({"content": " 2 pending"}),
    chunk({"content": " tasks."}),
    chunk({}, "stop"),
    {**HEAD, "choices": [], "usage": {"prompt_tokens": 412, "completion_tokens": 6, "total_tokens": 418}},
)


def call_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def call_piece(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


TOOL_STREAM = sse(
    chunk(
        {"role": "assistant", "content": None, "tool_calls": [call_start(0, "call_Y7m5", "add_task")], "refusal": None}
    ),
    chunk({"tool_calls": [call_piece(0, '{"ti')]}),
    chunk({"tool_calls": [call_piece(0, 'tle": "Call')]}),
    chunk({"tool_calls": [call_start(1, "call_Q2x8", "add_task")]}),
    chunk({"tool_calls": [call_piece(1, '{"title": "Buy eggs"}')]}),
    chunk({"tool_calls": [call_piece(0, ' mom"}')]}),
    chunk({}, "tool_calls"),
)


def request(*messages: ChatMessage) -> AgentRequest:
    return AgentRequest(
        "You are a todo assistant.", messages or (ChatMessage.user("Add call mom and eggs"),), (ADD_TASK,)
    )


@pytest.fixture
async def agent() -> AsyncIterator[OpenAIChatAgent]:
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=0)
    yield agent
    await agent.aclose()


def event_stream(body: bytes) -> dict[str, Any]:
    return {"status_code": 200, "content": body, "headers": {"content-type": "text/event-stream"}}


async def collect(agent: OpenAIChatAgent, agent_request: AgentRequest) -> list[AgentStreamEvent]:
    return [event async for event in agent.stream(agent_request)]


async def test_text_arrives_as_deltas_then_the_whole_response(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(**event_stream(TEXT_STREAM))

    events = await collect(agent, request())

    assert events == [
        TextDelta("You have"),
        TextDelta(" 2 pending"),
        TextDelta(" tasks."),
        AgentResponse("You have 2 pending tasks.", (), "stop", Usage(412, 6), SNAPSHOT),
    ]


async def test_tool_call_argument_deltas_are_assembled_per_call(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(**event_stream(TOOL_STREAM))

    events = await collect(agent, request())

    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, id="call_Y7m5", name="add_task", arguments="")
    assert "".join(d.arguments for d in deltas if d.index == 0) == '{"title": "Call mom"}'
    assert "".join(d.arguments for d in deltas if d.index == 1) == '{"title": "Buy eggs"}'
    assert not [e for e in events if isinstance(e, TextDelta)]
    assert events[-1] == AgentResponse(
        "",
        (
            ToolCall("call_Y7m5", "add_task", {"title": "Call mom"}),
            ToolCall("call_Q2x8", "add_task", {"title": "Buy eggs"}),
        ),
        "tool_calls",
        None,  # this stream was not asked for usage (a server that ignores stream_options sends none)
        SNAPSHOT,
    )


async def test_a_refusal_streams_as_the_answer_text(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(
        **event_stream(
            sse(
                chunk({"role": "assistant", "content": None, "refusal": "I can't"}),
                chunk({"refusal": " help."}, "stop"),
            )
        )
    )

    events = await collect(agent, request())

    assert events[-1] == AgentResponse("I can't help.", (), "stop", None, SNAPSHOT)


async def test_a_stream_without_choices_is_unavailable(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(**event_stream(sse()))

    with pytest.raises(AgentUnavailable):
        await collect(agent, request())


async def test_the_usage_chunk_without_choices_is_the_steps_usage_with_its_cached_part(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    """With ``stream_options.include_usage`` OpenAI sends ``"usage": null`` in every chunk and the usage in one
    more chunk after the last choice; ``prompt_tokens`` include the cached tokens."""
    usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 6,
        "total_tokens": 2012,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    body = sse(
        {**chunk({"role": "assistant", "content": "", "refusal": None}), "usage": None},
        {**chunk({"content": "Done."}), "usage": None},
        {**chunk({}, "stop"), "usage": None},
        {**HEAD, "choices": [], "usage": usage},
    )
    httpx2_mock.post(COMPLETIONS_URL).respond(**event_stream(body))

    events = await collect(agent, request())

    assert events == [
        TextDelta("Done."),
        AgentResponse("Done.", (), "stop", Usage(2006, 6, cached_read_tokens=1920), SNAPSHOT),
    ]


async def test_a_chunk_that_is_not_a_chunk_is_an_unavailable_provider(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    body = sse(chunk({"content": "Hel"})).replace(b"data: [DONE]", b'data: {"choices": "lo"}')
    httpx2_mock.post(COMPLETIONS_URL).respond(**event_stream(body))
    seen: list[AgentStreamEvent] = []

    async def read_all() -> None:
        async for event in agent.stream(request()):
            seen.append(event)

    with pytest.raises(AgentUnavailable, match="could not read"):
        await read_all()

    assert seen == [TextDelta("Hel")]
