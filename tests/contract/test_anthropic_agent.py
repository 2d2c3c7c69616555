"""AnthropicChatAgent against the Messages API wire format: exact request bodies, documented responses, every error.

The SDK sends through httpx2, so requests are intercepted with respx's ``httpcore2`` mocker (the
``httpx2_mock`` fixture of pytest-httpx2); any request to an unmocked URL fails the test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest
import respx

from chatcore.adapters.anthropic.agent import CUT_OFF_REPLY, AnthropicChatAgent
from chatcore.errors import AgentError, AgentRateLimited, AgentUnavailable, ContextTooLong
from chatcore.model import (
    AgentRequest,
    AgentResponse,
    ChatMessage,
    Message,
    MessageStatus,
    Role,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)

API_KEY = "sk-ant-test-SECRET123"
BASE_URL = "https://fake-anthropic.test"
MESSAGES_URL = f"{BASE_URL}/v1/messages"
SYSTEM_PROMPT = "You are a helpful todo assistant. The user is alice@example.com."
SECRET_USER_TEXT = "my bank PIN is 4321"
MODEL = "claude-sonnet-4-6"
"""The SDK warns about the default model, which reaches end-of-life on 2026-11-30; tests use MODEL instead."""

ADD_TASK = ToolSpec(
    name="add_task",
    description="Add a task to the user's list.",
    parameters={
        "type": "object",
        "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
        "required": ["title"],
        "additionalProperties": False,
    },
)
LIST_TASKS = ToolSpec(
    name="list_tasks",
    description="List the user's tasks.",
    parameters={"type": "object", "properties": {"status": {"enum": ["all", "pending", "completed"]}}},
)

MILK = ToolCall(id="toolu_01milk", name="add_task", arguments={"title": "Buy milk"})
EGGS = ToolCall(id="toolu_02eggs", name="add_task", arguments={"title": "Buy eggs", "description": "a dozen"})
MILK_RESULT = ChatMessage.tool_result(MILK, ToolResult(result={"id": 1, "title": "Buy milk", "completed": False}))
EGGS_RESULT = ChatMessage.tool_result(EGGS, ToolResult(error="A task with this title already exists"))


def history() -> tuple[ChatMessage, ...]:
    """A user message, two tool calls and their results (one failed), an answer, an unanswered message, a new one."""
    return (
        ChatMessage.user("Add milk and eggs to my list"),
        ChatMessage.assistant("", [MILK, EGGS]),
        MILK_RESULT,
        EGGS_RESULT,
        ChatMessage.assistant("I added milk; eggs were already on your list."),
        Message(
            role=Role.USER,
            content="Also remind me to call mom",
            conversation_id=uuid.uuid4(),
            seq=6,
            status=MessageStatus.UNANSWERED,
        ),
        ChatMessage.user("Are you there?"),
    )


MILK_RESULT_BLOCK = {
    "type": "tool_result",
    "tool_use_id": "toolu_01milk",
    "content": '{"id": 1, "title": "Buy milk", "completed": false}',
}
EGGS_RESULT_BLOCK = {
    "type": "tool_result",
    "tool_use_id": "toolu_02eggs",
    "content": '{"error": "A task with this title already exists"}',
    "is_error": True,
}

EXPECTED_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 256,
    "temperature": 0.2,
    "system": SYSTEM_PROMPT,
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Add milk and eggs to my list"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01milk", "name": "add_task", "input": {"title": "Buy milk"}},
                {
                    "type": "tool_use",
                    "id": "toolu_02eggs",
                    "name": "add_task",
                    "input": {"title": "Buy eggs", "description": "a dozen"},
                },
            ],
        },
        {"role": "user", "content": [MILK_RESULT_BLOCK, EGGS_RESULT_BLOCK]},
        {"role": "assistant", "content": [{"type": "text", "text": "I added milk; eggs were already on your list."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Also remind me to call mom"},
                {"type": "text", "text": "Are you there?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "add_task",
            "description": "Add a task to the user's list.",
            "input_schema": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                "required": ["title"],
                "additionalProperties": False,
            },
        },
        {
            "name": "list_tasks",
            "description": "List the user's tasks.",
            "input_schema": {"type": "object", "properties": {"status": {"enum": ["all", "pending", "completed"]}}},
        },
    ],
}

REPORTED_USAGE = Usage(input_tokens=412, output_tokens=31)
USAGE = {
    "input_tokens": 412,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 31,
    "service_tier": "standard",
}

TEXT_RESPONSE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "You have 2 pending tasks: Buy milk and Call mom."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": USAGE,
}

TEXT_AND_TOOL_USE_RESPONSE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "text", "text": "I'll add that task for you."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "add_task",
            "input": {"title": "Call mom", "description": "about Sunday"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": USAGE,
}

SEVERAL_TOOL_USES_RESPONSE: dict[str, Any] = {
    "id": "msg_017uGwPMpDRFMMYaDS1j6W2N",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "text", "text": "Let me add both tasks and then show your list."},
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "add_task",
            "input": {"title": "Call mom"},
        },
        {
            "type": "tool_use",
            "id": "toolu_01V1x2gK45rBnl3uOUsO8Vq7",
            "name": "add_task",
            "input": {"title": "Pay rent"},
        },
        {"type": "tool_use", "id": "toolu_01W1x3hL56sCom4vPVtP9Wr8", "name": "list_tasks", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": USAGE,
}


def request(*messages: ChatMessage, tools: tuple[ToolSpec, ...] = (ADD_TASK,)) -> AgentRequest:
    return AgentRequest(
        system_prompt=SYSTEM_PROMPT,
        messages=messages or (ChatMessage.user(SECRET_USER_TEXT),),
        tools=tools,
    )


def sent_body(route: respx.Route, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[index].request.content)
    return body


@pytest.fixture
async def agent() -> AsyncIterator[AnthropicChatAgent]:
    agent = AnthropicChatAgent(model=MODEL, api_key=API_KEY, base_url=BASE_URL, max_retries=0)
    yield agent
    await agent.aclose()


async def test_request_is_exactly_the_messages_api_wire_format(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)
    agent = AnthropicChatAgent(
        model=MODEL, api_key=API_KEY, base_url=BASE_URL, max_tokens=256, temperature=0.2, max_retries=0
    )

    await agent.complete(AgentRequest(SYSTEM_PROMPT, history(), (ADD_TASK, LIST_TASKS)))
    await agent.aclose()

    assert route.call_count == 1
    assert sent_body(route) == EXPECTED_REQUEST
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert "anthropic-version" in sent.headers


async def test_defaults_and_omitted_system_tools_and_temperature(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)
    agent = AnthropicChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=0)

    await agent.complete(AgentRequest("", (ChatMessage.user("hi"),), ()))
    await agent.aclose()

    assert sent_body(route) == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


async def test_tool_results_followed_by_new_user_text_merge_into_one_user_message(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    """A turn that failed after its tools ran leaves results; the user's next words join them."""
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)

    await agent.complete(
        request(
            ChatMessage.user("Add milk and eggs"),
            ChatMessage.assistant("On it.", [MILK, EGGS]),
            MILK_RESULT,
            EGGS_RESULT,
            ChatMessage.user("Did that work?"),
        )
    )

    assert sent_body(route)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Add milk and eggs"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "toolu_01milk", "name": "add_task", "input": {"title": "Buy milk"}},
                {
                    "type": "tool_use",
                    "id": "toolu_02eggs",
                    "name": "add_task",
                    "input": {"title": "Buy eggs", "description": "a dozen"},
                },
            ],
        },
        {
            "role": "user",
            "content": [MILK_RESULT_BLOCK, EGGS_RESULT_BLOCK, {"type": "text", "text": "Did that work?"}],
        },
    ]


async def test_messages_before_the_first_user_message_are_dropped(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    """A window that starts mid-exchange: the orphaned reply and its tool results cannot be sent first."""
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)

    await agent.complete(
        request(
            ChatMessage.assistant("Adding it.", [MILK]),
            MILK_RESULT,
            ChatMessage.assistant("Done."),
            ChatMessage.user("Thanks"),
        )
    )

    assert sent_body(route)["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Thanks"}]}]


async def test_consecutive_assistant_messages_merge_and_blank_text_is_left_out(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)

    await agent.complete(
        request(
            ChatMessage.user("hi"),
            ChatMessage.assistant("  \n"),
            ChatMessage.assistant("Hello!"),
            ChatMessage.user("Add milk"),
        )
    )

    assert sent_body(route)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": [{"type": "text", "text": "Add milk"}]},
    ]


async def test_text_response_becomes_a_final_answer(httpx2_mock: respx.Router, agent: AnthropicChatAgent) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)

    response = await agent.complete(request())

    assert response == AgentResponse(
        "You have 2 pending tasks: Buy milk and Call mom.", (), "end_turn", usage=REPORTED_USAGE, model=MODEL
    )


async def test_text_and_tool_use_in_one_response(httpx2_mock: respx.Router, agent: AnthropicChatAgent) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_AND_TOOL_USE_RESPONSE)

    response = await agent.complete(request())

    assert response == AgentResponse(
        text="I'll add that task for you.",
        tool_calls=(
            ToolCall(
                id="toolu_01A09q90qw90lq917835lq9",
                name="add_task",
                arguments={"title": "Call mom", "description": "about Sunday"},
            ),
        ),
        stop_reason="tool_use",
        usage=REPORTED_USAGE,
        model=MODEL,
    )


async def test_several_tool_uses_in_one_response(httpx2_mock: respx.Router, agent: AnthropicChatAgent) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(200, json=SEVERAL_TOOL_USES_RESPONSE)

    response = await agent.complete(request())

    assert response.text == "Let me add both tasks and then show your list."
    assert response.tool_calls == (
        ToolCall(id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="add_task", arguments={"title": "Call mom"}),
        ToolCall(id="toolu_01V1x2gK45rBnl3uOUsO8Vq7", name="add_task", arguments={"title": "Pay rent"}),
        ToolCall(id="toolu_01W1x3hL56sCom4vPVtP9Wr8", name="list_tasks", arguments={}),
    )
    assert response.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("text_blocks", "expected_text"),
    [
        ([{"type": "text", "text": "I'll add that task for you."}], "I'll add that task for you."),
        ([], CUT_OFF_REPLY),
    ],
)
async def test_a_tool_use_cut_off_by_max_tokens_is_not_run(
    httpx2_mock: respx.Router,
    agent: AnthropicChatAgent,
    text_blocks: list[dict[str, Any]],
    expected_text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # stop_reason, not the presence of tool_use blocks, drives the loop: a truncated input must not run.
    truncated = {"type": "tool_use", "id": "toolu_01Cut", "name": "add_task", "input": {"title": "Buy mi"}}
    body = {**TEXT_AND_TOOL_USE_RESPONSE, "content": [*text_blocks, truncated], "stop_reason": "max_tokens"}
    httpx2_mock.post(MESSAGES_URL).respond(200, json=body)

    response = await agent.complete(request())

    assert response == AgentResponse(text=expected_text, stop_reason="max_tokens", usage=REPORTED_USAGE, model=MODEL)
    assert "max_tokens" in caplog.text


async def test_text_blocks_are_joined_and_thinking_is_not_the_answer(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    body = {
        **TEXT_RESPONSE,
        "content": [
            {"type": "thinking", "thinking": "The user wants a summary.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
            {"type": "text", "text": "You have 2 pending tasks: "},
            {"type": "text", "text": "Buy milk and Call mom."},
        ],
    }
    httpx2_mock.post(MESSAGES_URL).respond(200, json=body)

    response = await agent.complete(request())

    assert response.text == "You have 2 pending tasks: Buy milk and Call mom."
    assert response.tool_calls == ()


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


ERROR_CASES = [
    pytest.param(
        httpx.Response(401, json=error_body("authentication_error", f"invalid x-api-key: {API_KEY}")),
        AgentUnavailable,
        "Anthropic request failed: authentication error",
        id="401",
    ),
    pytest.param(
        httpx.Response(
            403, json=error_body("permission_error", f"Your API key {API_KEY} does not have permission to use it.")
        ),
        AgentUnavailable,
        "Anthropic request failed: permission denied",
        id="403",
    ),
    pytest.param(
        httpx.Response(500, json=error_body("api_error", "Internal server error")),
        AgentUnavailable,
        "Anthropic request failed: server error (HTTP 500)",
        id="500",
    ),
    pytest.param(
        httpx.Response(529, json=error_body("overloaded_error", "Overloaded")),
        AgentUnavailable,
        "Anthropic request failed: overloaded (HTTP 529)",
        id="529",
    ),
    pytest.param(
        httpx.Response(
            400, json=error_body("invalid_request_error", "prompt is too long: 210094 tokens > 200000 maximum")
        ),
        ContextTooLong,
        ContextTooLong.default_detail,
        id="400-prompt-too-long",
    ),
    pytest.param(
        httpx.Response(
            400,
            json=error_body(
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 197202 + 21333 > 204658, "
                "decrease input length or `max_tokens` and try again",
            ),
        ),
        ContextTooLong,
        ContextTooLong.default_detail,
        id="400-exceed-context-limit",
    ),
    pytest.param(
        httpx.Response(
            413, json=error_body("request_too_large", "Request exceeds the maximum allowed number of bytes.")
        ),
        ContextTooLong,
        ContextTooLong.default_detail,
        id="413",
    ),
    pytest.param(
        httpx.Response(
            400,
            json=error_body(
                "invalid_request_error",
                f"messages.0.content.0.text: {SECRET_USER_TEXT} text content blocks must be non-empty",
            ),
        ),
        AgentUnavailable,
        "Anthropic rejected the request: HTTP 400 (invalid_request_error)",
        id="400-other",
    ),
    pytest.param(
        httpx.Response(404, json=error_body("not_found_error", "model: claude-nope")),
        AgentUnavailable,
        "Anthropic rejected the request: HTTP 404 (not_found_error)",
        id="404",
    ),
    pytest.param(
        httpx.Response(
            429,
            headers={"retry-after": "30"},
            json=error_body("rate_limit_error", "This request would exceed the rate limit for your organization."),
        ),
        AgentRateLimited,
        "Anthropic is rate limiting requests",
        id="429",
    ),
]


@pytest.mark.parametrize(("reply", "error_class", "detail"), ERROR_CASES)
async def test_http_errors_map_to_domain_errors(
    httpx2_mock: respx.Router,
    agent: AnthropicChatAgent,
    reply: httpx.Response,
    error_class: type[AgentError],
    detail: str,
) -> None:
    httpx2_mock.post(MESSAGES_URL).mock(return_value=reply)

    with pytest.raises(AgentError) as caught:
        await agent.complete(request())

    error = caught.value
    assert type(error) is error_class
    assert error.detail == detail
    assert error.provider == "anthropic"
    assert isinstance(error.__cause__, anthropic.APIStatusError)
    assert_nothing_leaks(error)


@pytest.mark.parametrize(("header", "retry_after"), [("30", 30), ("0.2", 1), (None, 10), ("later", 10)])
async def test_rate_limit_carries_retry_after(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent, header: str | None, retry_after: int
) -> None:
    headers = {"retry-after": header} if header else {}
    httpx2_mock.post(MESSAGES_URL).respond(429, headers=headers, json=error_body("rate_limit_error", "Slow down"))

    with pytest.raises(AgentRateLimited) as caught:
        await agent.complete(request())

    assert caught.value.retry_after == retry_after


def assert_nothing_leaks(error: AgentError) -> None:
    for text in (error.detail, str(error), repr(error)):
        assert API_KEY not in text
        assert "SECRET123" not in text
        assert SECRET_USER_TEXT not in text
        assert SYSTEM_PROMPT not in text


async def test_timeout_is_configured_on_the_client(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(MESSAGES_URL).respond(200, json=TEXT_RESPONSE)
    agent = AnthropicChatAgent(model=MODEL, api_key=API_KEY, base_url=BASE_URL, timeout_seconds=12.5)

    await agent.complete(request())
    await agent.aclose()

    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout["read"] == 12.5
    assert timeout["connect"] == 12.5


async def test_base_url_sends_requests_to_that_host(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post("http://127.0.0.1:8081/v1/messages").respond(200, json=TEXT_RESPONSE)
    agent = AnthropicChatAgent(api_key=API_KEY, base_url="http://127.0.0.1:8081", model="claude-haiku-4-5")

    await agent.complete(request())
    await agent.aclose()

    assert route.call_count == 1
    assert sent_body(route)["model"] == "claude-haiku-4-5"


async def test_anthropic_base_url_and_api_key_environment_variables_are_honoured(
    httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://env-anthropic.test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    route = httpx2_mock.post("https://env-anthropic.test/v1/messages").respond(200, json=TEXT_RESPONSE)
    agent = AnthropicChatAgent(model=MODEL)

    await agent.complete(request())
    await agent.aclose()

    assert route.calls.last.request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_usage_is_the_whole_input_with_the_prompt_caches_parts(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    """Anthropic's ``input_tokens`` leave out the tokens read from and written to the prompt cache: the whole
    input is the three together."""
    usage = {**USAGE, "input_tokens": 50, "cache_read_input_tokens": 1800, "cache_creation_input_tokens": 248}
    httpx2_mock.post(MESSAGES_URL).respond(200, json={**TEXT_RESPONSE, "usage": usage})

    response = await agent.complete(request())

    assert response.usage == Usage(input_tokens=2098, output_tokens=31, cached_read_tokens=1800, cache_write_tokens=248)


async def test_a_reply_that_is_not_json_is_an_unavailable_provider(
    httpx2_mock: respx.Router, agent: AnthropicChatAgent
) -> None:
    httpx2_mock.post(MESSAGES_URL).respond(200, text="<html>proxy error</html>")

    with pytest.raises(AgentUnavailable, match="not JSON"):
        await agent.complete(request())
