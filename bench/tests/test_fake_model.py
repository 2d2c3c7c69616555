"""The fake model speaks both wire formats well enough for the real SDKs, and does what its settings say."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message as AnthropicMessage
from openai.types.chat import ChatCompletion

from bench.fake_model import FakeModelApp, FakeModelConfig

TOOLS_OPENAI: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "add_task",
            "description": "Add a task",
            "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
        },
    }
]
TOOLS_ANTHROPIC: list[Any] = [
    {
        "name": "add_task",
        "description": "Add a task",
        "input_schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
    }
]


@pytest.fixture
def app() -> FakeModelApp:
    return FakeModelApp(FakeModelConfig())


@pytest.fixture
async def http(app: FakeModelApp) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://fake") as client:
        yield client


@pytest.fixture
def openai_client(http: httpx2.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="bench", base_url="http://fake/v1", http_client=http, max_retries=0)


@pytest.fixture
def anthropic_client(http: httpx2.AsyncClient) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="bench", base_url="http://fake", http_client=http, max_retries=0)


async def test_openai_text_reply_is_a_complete_chat_completion(http: httpx2.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}]},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    completion = ChatCompletion.model_validate(response.json())
    assert completion.model == "gpt-x"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "Noted: Hi. Anything else?"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_openai_tool_mode_calls_add_task_then_answers(
    app: FakeModelApp, openai_client: openai.AsyncOpenAI
) -> None:
    app.config = FakeModelConfig(mode="tool")
    first = await openai_client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Buy   milk\nand eggs"}], tools=TOOLS_OPENAI
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "add_task"
    assert json.loads(call.function.arguments) == {"title": "Buy milk and eggs"}

    second = await openai_client.chat.completions.create(
        model="gpt-x",
        messages=[
            {"role": "user", "content": "Buy milk"},
            cast(Any, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}),
            {"role": "tool", "tool_call_id": call.id, "content": '{"task_id": 1}'},
        ],
        tools=TOOLS_OPENAI,
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "Done: I added that task to your list."
    assert (app.stats.openai, app.stats.tool_calls, app.stats.texts) == (2, 1, 1)


async def test_tool_mode_answers_in_text_when_no_tool_is_offered(
    app: FakeModelApp, openai_client: openai.AsyncOpenAI
) -> None:
    app.config = FakeModelConfig(mode="tool")
    completion = await openai_client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content


async def test_anthropic_tool_mode_round_trip(app: FakeModelApp, anthropic_client: anthropic.AsyncAnthropic) -> None:
    app.config = FakeModelConfig(mode="tool")
    first = await anthropic_client.messages.create(
        model="claude-x",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Call mom"}]}],
        tools=TOOLS_ANTHROPIC,
    )
    assert first.stop_reason == "tool_use"
    [block] = first.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("add_task", {"title": "Call mom"})

    second = await anthropic_client.messages.create(
        model="claude-x",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Call mom"},
            cast(Any, {"role": "assistant", "content": [block.model_dump()]}),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "{}"}]},
        ],
        tools=TOOLS_ANTHROPIC,
    )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert app.stats.anthropic == 2


async def test_anthropic_text_reply_validates_against_the_sdk_model(http: httpx2.AsyncClient) -> None:
    response = await http.post(
        "/v1/messages", json={"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    message = AnthropicMessage.model_validate(response.json())
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens >= 1


async def test_bad_requests_get_each_providers_error_shape(
    openai_client: openai.AsyncOpenAI, anthropic_client: anthropic.AsyncAnthropic, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(openai.BadRequestError, match="does not stream"):
        await openai_client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    with pytest.raises(anthropic.BadRequestError, match="does not stream"):
        await anthropic_client.messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    response = await http.post("/v1/messages", json={"model": "c", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = await http.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_control_changes_settings_and_resets_counters(app: FakeModelApp, http: httpx2.AsyncClient) -> None:
    await http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    state = (await http.post("/control", json={"latency_ms": 500, "mode": "tool"})).json()
    assert state["config"] == {"latency_ms": 500.0, "mode": "tool"}
    assert state["stats"]["openai"] == 1
    assert app.config == FakeModelConfig(latency_ms=500.0, mode="tool")

    state = (await http.post("/control", json={"reset_stats": True})).json()
    assert state["stats"]["openai"] == 0
    assert state["config"]["mode"] == "tool"

    refused = await http.post("/control", json={"mode": "poetry"})
    assert refused.status_code == 400
    assert app.config.mode == "tool"
    assert (await http.post("/control", json={"latency_ms": -1})).status_code == 400


async def test_latency_is_slept_per_request_and_overridable_by_query(
    app: FakeModelApp, http: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("bench.fake_model.asyncio.sleep", fake_sleep)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    app.config = FakeModelConfig(latency_ms=250)
    await http.post("/v1/chat/completions", json=body)
    await http.post("/v1/chat/completions?latency_ms=0", json=body)
    await http.post("/v1/messages?latency_ms=40", json={**body, "max_tokens": 5})
    assert slept == [0.25, 0.04]


async def test_unknown_routes_are_404(http: httpx2.AsyncClient) -> None:
    assert (await http.get("/v1/models")).status_code == 404
    assert (await http.get("/health")).json() == {"status": "ok"}
