"""OpenAIChatAgent reads replies as plain JSON (not the SDK's models): what compatible servers send must still work.

Local OpenAI-compatible servers (Ollama, llama.cpp, vLLM) leave out fields OpenAI always sends, and a proxy
in front of any of them can answer with something that is not JSON at all. The agent must read the first
kind as the SDK's lenient models did, and turn the second into a clean AgentUnavailable, never a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import respx

from chatcore.adapters.openai.agent import OpenAIChatAgent
from chatcore.errors import AgentUnavailable
from chatcore.model import AgentRequest, ChatMessage, ToolCall

BASE_URL = "http://127.0.0.1:11434/v1"
COMPLETIONS_URL = f"{BASE_URL}/chat/completions"


def request() -> AgentRequest:
    return AgentRequest(system_prompt="Be brief.", messages=(ChatMessage.user("hi"),), tools=())


@pytest.fixture
async def agent() -> AsyncIterator[OpenAIChatAgent]:
    agent = OpenAIChatAgent(api_key="local", base_url=BASE_URL, max_retries=0)
    yield agent
    await agent.aclose()


async def test_a_bare_minimum_reply_is_read(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json={"choices": [{"message": {"content": "Hello!"}}]})

    response = await agent.complete(request())

    assert (response.text, response.tool_calls, response.stop_reason) == ("Hello!", (), None)


async def test_null_content_and_null_tool_calls_are_an_empty_answer(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": None}, "finish_reason": None}]}
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json=body)

    response = await agent.complete(request())

    assert (response.text, response.tool_calls) == ("", ())


async def test_only_function_calls_are_kept_and_a_call_without_type_is_a_function_call(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    calls = [
        {"id": "call_custom", "type": "custom", "custom": {"name": "grep", "input": "milk"}},
        {"id": "call_1", "function": {"name": "add_task", "arguments": '{"title": "Buy milk"}'}},
        "not a call at all",
    ]
    body = {"choices": [{"message": {"content": None, "tool_calls": calls}, "finish_reason": "tool_calls"}]}
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json=body)

    response = await agent.complete(request())

    assert response.tool_calls == (ToolCall("call_1", "add_task", {"title": "Buy milk"}),)
    assert response.stop_reason == "tool_calls"


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
        ("application/json", b'"just a string"'),
        ("application/json", b'{"choices": "none"}'),
        ("application/json", b'{"choices": [null]}'),
    ],
)
async def test_a_reply_that_is_not_a_completion_is_unavailable(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent, content_type: str, content: bytes
) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, headers={"content-type": content_type}, content=content)

    with pytest.raises(AgentUnavailable) as raised:
        await agent.complete(request())

    assert raised.value.provider == "openai"
