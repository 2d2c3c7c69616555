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

from bench.fake_model import FakeModelApp, FakeModelConfig, echo, split_text

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
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty array"):
        await openai_client.chat.completions.create(model="gpt-x", messages=[], stream=True)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await anthropic_client.messages.create(
            model="claude-x", max_tokens=0, messages=[{"role": "user", "content": "Hi"}], stream=True
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
    assert state["config"] == {"latency_ms": 500.0, "mode": "tool", "reply_chars": 0, "chunks": 1}
    assert state["stats"]["openai"] == 1
    assert app.config == FakeModelConfig(latency_ms=500.0, mode="tool")
    state = (await http.post("/control", json={"reply_chars": 1600, "chunks": 100})).json()
    assert app.config == FakeModelConfig(latency_ms=500.0, mode="tool", reply_chars=1600, chunks=100)

    state = (await http.post("/control", json={"reset_stats": True})).json()
    assert state["stats"]["openai"] == 0
    assert state["config"]["mode"] == "tool"

    refused = await http.post("/control", json={"mode": "poetry"})
    assert refused.status_code == 400
    assert app.config.mode == "tool"
    assert (await http.post("/control", json={"latency_ms": -1})).status_code == 400
    assert (await http.post("/control", json={"chunks": 0})).status_code == 400
    assert (await http.post("/control", json={"reply_chars": "many"})).status_code == 400
    assert app.config.chunks == 100


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the fake model slept, in seconds, instead of sleeping."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("bench.fake_model.asyncio.sleep", fake_sleep)
    return slept


async def test_latency_is_slept_per_request_and_overridable_by_query(
    app: FakeModelApp, http: httpx2.AsyncClient, slept: list[float]
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    app.config = FakeModelConfig(latency_ms=250)
    await http.post("/v1/chat/completions", json=body)
    await http.post("/v1/chat/completions?latency_ms=0", json=body)
    await http.post("/v1/messages?latency_ms=40", json={**body, "max_tokens": 5})
    assert slept == [0.25, 0.04]


async def test_unknown_routes_are_404(http: httpx2.AsyncClient) -> None:
    assert (await http.get("/v1/models")).status_code == 404
    assert (await http.get("/health")).json() == {"status": "ok"}


def test_echo_and_split_keep_every_character() -> None:
    assert echo("Buy  milk", 20) == "Buy milk Buy milk Bu"
    assert len(echo("x" * 3000, 1600)) == 1600
    assert echo("", 5) == "Bench"
    assert split_text("abcdefghij", 4) == ["abc", "def", "gh", "ij"]
    assert split_text("ab", 5) == ["a", "b"]
    text = echo("Please add a task", 1600)
    assert "".join(split_text(text, 400)) == text
    assert {len(piece) for piece in split_text(text, 400)} == {4}


async def test_openai_streams_the_echo_in_chunks_the_sdk_reads(
    app: FakeModelApp, openai_client: openai.AsyncOpenAI
) -> None:
    app.config = FakeModelConfig(reply_chars=1600, chunks=100)
    stream = await openai_client.chat.completions.create(
        model="gpt-x",
        messages=[{"role": "user", "content": "Please add a task to buy milk"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    texts = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(texts) == 100
    assert "".join(texts) == echo("Please add a task to buy milk", 1600)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 400
    assert (app.stats.openai, app.stats.streams, app.stats.texts) == (1, 1, 1)


async def test_openai_streams_a_tool_call_whole(app: FakeModelApp, openai_client: openai.AsyncOpenAI) -> None:
    app.config = FakeModelConfig(mode="tool", chunks=50)
    stream = await openai_client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Call mom"}], tools=TOOLS_OPENAI, stream=True
    )
    calls = [
        piece
        for chunk in [c async for c in stream]
        if chunk.choices
        for piece in chunk.choices[0].delta.tool_calls or ()
    ]
    assert calls[0].id is not None
    assert calls[0].function is not None
    assert calls[0].function.name == "add_task"
    assert json.loads("".join(c.function.arguments or "" for c in calls if c.function)) == {"title": "Call mom"}


async def test_anthropic_streams_text_and_tool_use_the_sdk_reads(
    app: FakeModelApp, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    app.config = FakeModelConfig(reply_chars=100, chunks=10)
    async with anthropic_client.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hello there"}]
    ) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert len(texts) == 10
    assert "".join(texts) == echo("Hello there", 100)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 25

    app.config = FakeModelConfig(mode="tool")
    async with anthropic_client.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Call mom"}], tools=TOOLS_ANTHROPIC
    ) as stream:
        message = await stream.get_final_message()
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("add_task", {"title": "Call mom"})
    assert message.stop_reason == "tool_use"


async def test_a_stream_spreads_its_pieces_over_the_latency(
    app: FakeModelApp, http: httpx2.AsyncClient, slept: list[float]
) -> None:
    app.config = FakeModelConfig(latency_ms=2000, reply_chars=1600, chunks=100)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    assert len(slept) == 100
    assert slept == sorted(slept)
    assert slept[0] == pytest.approx(0.02, abs=0.01)
    assert slept[-1] == pytest.approx(2.0, abs=0.01)
