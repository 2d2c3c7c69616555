"""OpenAIChatAgent against OpenAI's wire format: exact request bodies, documented responses, every error.

The SDK sends through httpx2, so requests are intercepted with respx's ``httpcore2`` mocker (the
``httpx2_mock`` fixture of pytest-httpx2); any request to an unmocked URL fails the test.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpcore2
import httpx
import openai
import pytest
import respx

from chatcore.adapters.openai.agent import INVALID_JSON_KEY, OpenAIChatAgent
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

API_KEY = "sk-test-SECRET123"
BASE_URL = "https://fake-openai.test/v1"
COMPLETIONS_URL = f"{BASE_URL}/chat/completions"
SYSTEM_PROMPT = "You are a helpful todo assistant. The user is alice@example.com."
SECRET_USER_TEXT = "my bank PIN is 4321"

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

MILK = ToolCall(id="call_milk", name="add_task", arguments={"title": "Buy milk"})
EGGS = ToolCall(id="call_eggs", name="add_task", arguments={"title": "Buy eggs", "description": "a dozen, free-range"})


def history() -> tuple[ChatMessage, ...]:
    """A user message, two tool calls and their results (one failed), an answer, an unanswered message, a new one."""
    return (
        ChatMessage.user("Add milk and eggs to my list"),
        ChatMessage.assistant("", [MILK, EGGS]),
        ChatMessage.tool_result(MILK, ToolResult(result={"id": 1, "title": "Buy milk", "completed": False})),
        ChatMessage.tool_result(EGGS, ToolResult(error="A task with this title already exists")),
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


EXPECTED_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 256,
    "temperature": 0.2,
    "messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Add milk and eggs to my list"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_milk",
                    "type": "function",
                    "function": {"name": "add_task", "arguments": '{"title":"Buy milk"}'},
                },
                {
                    "id": "call_eggs",
                    "type": "function",
                    "function": {
                        "name": "add_task",
                        "arguments": '{"title":"Buy eggs","description":"a dozen, free-range"}',
                    },
                },
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_milk",
            "content": '{"id": 1, "title": "Buy milk", "completed": false}',
        },
        {
            "role": "tool",
            "tool_call_id": "call_eggs",
            "content": '{"error": "A task with this title already exists"}',
        },
        {"role": "assistant", "content": "I added milk; eggs were already on your list."},
        {"role": "user", "content": "Also remind me to call mom"},
        {"role": "user", "content": "Are you there?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "add_task",
                "description": "Add a task to the user's list.",
                "parameters": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                    "required": ["title"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "list_tasks",
                "description": "List the user's tasks.",
                "parameters": {
                    "type": "object",
                    "properties": {"status": {"enum": ["all", "pending", "completed"]}},
                },
            },
        },
    ],
}

USAGE = {
    "prompt_tokens": 412,
    "completion_tokens": 31,
    "total_tokens": 443,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

REPORTED_USAGE = Usage(input_tokens=412, output_tokens=31)
SNAPSHOT = "gpt-4o-mini-2024-07-18"
"""The model name OpenAI reports answering with: the dated snapshot of the one asked for."""

TEXT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "You have 2 pending tasks: Buy milk and Call mom.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}

TOOL_CALLS_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-BAl2fBLhHmDDGkXR9HdeNtwWpYZ3m",
    "object": "chat.completion",
    "created": 1741882085,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_Y7m5pvr4AVqQ8Kx0Z1cFdnJr",
                        "type": "function",
                        "function": {"name": "add_task", "arguments": '{"title":"Call mom"}'},
                    },
                    {
                        "id": "call_3bqH2WkRz9cUp1JvN6eTaLxM",
                        "type": "function",
                        "function": {"name": "list_tasks", "arguments": '{"status":"pending"}'},
                    },
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
    "service_tier": "default",
    "system_fingerprint": "fp_06737a9306",
}


def completion_with(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(TEXT_RESPONSE)
    body["choices"][0]["message"] = {"role": "assistant", "refusal": None, "annotations": [], **message}
    body["choices"][0]["finish_reason"] = finish_reason
    return body


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
async def agent() -> AsyncIterator[OpenAIChatAgent]:
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=0)
    yield agent
    await agent.aclose()


async def test_request_is_exactly_the_chat_completions_wire_format(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_tokens=256, temperature=0.2, max_retries=0)

    await agent.complete(AgentRequest(SYSTEM_PROMPT, history(), (ADD_TASK, LIST_TASKS)))
    await agent.aclose()

    assert route.call_count == 1
    assert sent_body(route) == EXPECTED_REQUEST
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"] == "application/json"


async def test_tools_and_temperature_are_omitted_when_absent(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)

    await agent.complete(AgentRequest("", (ChatMessage.user("hi"),), ()))

    assert sent_body(route) == {
        "model": "gpt-4o-mini",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_an_empty_assistant_reply_is_sent_as_empty_text_not_null(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)

    await agent.complete(request(ChatMessage.user("hi"), ChatMessage.assistant(""), ChatMessage.user("hello?")))

    assert sent_body(route)["messages"][2] == {"role": "assistant", "content": ""}


async def test_text_response_becomes_a_final_answer(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)

    response = await agent.complete(request())

    assert response == AgentResponse(
        "You have 2 pending tasks: Buy milk and Call mom.", (), "stop", usage=REPORTED_USAGE, model=SNAPSHOT
    )


async def test_several_tool_calls_in_one_response(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TOOL_CALLS_RESPONSE)

    response = await agent.complete(request())

    assert response == AgentResponse(
        text="",
        tool_calls=(
            ToolCall(id="call_Y7m5pvr4AVqQ8Kx0Z1cFdnJr", name="add_task", arguments={"title": "Call mom"}),
            ToolCall(id="call_3bqH2WkRz9cUp1JvN6eTaLxM", name="list_tasks", arguments={"status": "pending"}),
        ),
        stop_reason="tool_calls",
        usage=REPORTED_USAGE,
        model=SNAPSHOT,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"title": "Süßigkeiten kaufen"}', {"title": "Süßigkeiten kaufen"}),
        ("", {}),
        ("{}", {}),
        ('{"title": "Buy mi', {INVALID_JSON_KEY: '{"title": "Buy mi'}),
        ('["Buy milk"]', {INVALID_JSON_KEY: '["Buy milk"]'}),
        ("null", {INVALID_JSON_KEY: "null"}),
    ],
)
async def test_tool_arguments_that_are_not_a_json_object_are_passed_on_raw_for_the_tool_to_reject(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent, raw: str, expected: dict[str, Any]
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add_task", "arguments": raw}}
    httpx2_mock.post(COMPLETIONS_URL).respond(
        200, json=completion_with({"content": None, "tool_calls": [call]}, "length")
    )

    response = await agent.complete(request())

    assert response.tool_calls == (ToolCall(id="call_1", name="add_task", arguments=expected),)
    assert response.stop_reason == "length"


async def test_text_beside_tool_calls_is_kept(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "list_tasks", "arguments": "{}"}}
    httpx2_mock.post(COMPLETIONS_URL).respond(
        200, json=completion_with({"content": "Let me look.", "tool_calls": [call]}, "tool_calls")
    )

    response = await agent.complete(request())

    assert response.text == "Let me look."
    assert response.tool_calls == (ToolCall(id="call_1", name="list_tasks", arguments={}),)


async def test_a_missing_call_id_from_a_compatible_server_is_replaced(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    call = {"id": "", "type": "function", "function": {"name": "list_tasks", "arguments": "{}"}}
    httpx2_mock.post(COMPLETIONS_URL).respond(
        200, json=completion_with({"content": None, "tool_calls": [call]}, "tool_calls")
    )

    response = await agent.complete(request())

    [parsed] = response.tool_calls
    assert parsed.id.startswith("call_")
    assert len(parsed.id) > len("call_")


async def test_a_refusal_is_the_answer_text(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(
        200, json=completion_with({"content": None, "refusal": "I can't help with that."})
    )

    response = await agent.complete(request())

    assert response == AgentResponse(
        text="I can't help with that.", stop_reason="stop", usage=REPORTED_USAGE, model=SNAPSHOT
    )


async def test_a_response_without_choices_is_unavailable(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json={**TEXT_RESPONSE, "choices": []})

    with pytest.raises(AgentUnavailable) as caught:
        await agent.complete(request())

    assert caught.value.provider == "openai"


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ERROR_CASES = [
    pytest.param(
        httpx.Response(
            401,
            json=error_body(
                f"Incorrect API key provided: {API_KEY}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
        AgentUnavailable,
        "OpenAI request failed: authentication error",
        id="401",
    ),
    pytest.param(
        httpx.Response(
            403,
            json=error_body(f"Project of key {API_KEY} does not have access to model gpt-4o-mini", "permission_error"),
        ),
        AgentUnavailable,
        "OpenAI request failed: permission denied",
        id="403",
    ),
    pytest.param(
        httpx.Response(500, json=error_body("The server had an error while processing your request.", "server_error")),
        AgentUnavailable,
        "OpenAI request failed: server error (HTTP 500)",
        id="500",
    ),
    pytest.param(
        httpx.Response(503, text="<html>Service Unavailable</html>"),
        AgentUnavailable,
        "OpenAI request failed: server error (HTTP 503)",
        id="503-html",
    ),
    pytest.param(
        httpx.Response(
            400,
            json=error_body(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                f"130412 tokens. ({SECRET_USER_TEXT})",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
        ),
        ContextTooLong,
        ContextTooLong.default_detail,
        id="400-context_length_exceeded",
    ),
    pytest.param(
        httpx.Response(
            400,
            json={
                "object": "error",
                "message": "This model's maximum context length is 8192 tokens. However, you requested 9001 tokens.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        ),
        ContextTooLong,
        ContextTooLong.default_detail,
        id="400-vllm-context",
    ),
    pytest.param(
        httpx.Response(
            400,
            json=error_body(
                f"Invalid 'messages[1].content': {SECRET_USER_TEXT} is not allowed here.",
                "invalid_request_error",
                "invalid_value",
                "messages[1].content",
            ),
        ),
        AgentUnavailable,
        "OpenAI rejected the request: HTTP 400 (invalid_value)",
        id="400-other",
    ),
    pytest.param(
        httpx.Response(
            404,
            json=error_body(
                "The model `gpt-9` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
        ),
        AgentUnavailable,
        "OpenAI rejected the request: HTTP 404 (model_not_found)",
        id="404",
    ),
    pytest.param(
        httpx.Response(
            429,
            headers={"retry-after": "20"},
            json=error_body(
                "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.",
                "requests",
                "rate_limit_exceeded",
            ),
        ),
        AgentRateLimited,
        "OpenAI is rate limiting requests",
        id="429",
    ),
    pytest.param(
        httpx.Response(
            429,
            json=error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        ),
        AgentUnavailable,
        "OpenAI request failed: quota exceeded",
        id="429-insufficient_quota",
    ),
]


@pytest.mark.parametrize(("reply", "error_class", "detail"), ERROR_CASES)
async def test_http_errors_map_to_domain_errors(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent, reply: httpx.Response, error_class: type[AgentError], detail: str
) -> None:
    httpx2_mock.post(COMPLETIONS_URL).mock(return_value=reply)

    with pytest.raises(AgentError) as caught:
        await agent.complete(request())

    error = caught.value
    assert type(error) is error_class
    assert error.detail == detail
    assert error.provider == "openai"
    assert isinstance(error.__cause__, openai.APIStatusError)
    assert_nothing_leaks(error)


@pytest.mark.parametrize(
    ("header", "retry_after"),
    [("20", 20), ("1.5", 2), (None, 10), ("soon", 10), ("Wed, 21 Oct 2015 07:28:00 GMT", 1)],
)
async def test_rate_limit_carries_retry_after(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent, header: str | None, retry_after: int
) -> None:
    headers = {"retry-after": header} if header else {}
    httpx2_mock.post(COMPLETIONS_URL).respond(
        429, headers=headers, json=error_body("Rate limit reached", "requests", "rate_limit_exceeded")
    )

    with pytest.raises(AgentRateLimited) as caught:
        await agent.complete(request())

    assert caught.value.retry_after == retry_after


async def test_the_api_key_may_come_from_the_environment(
    httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(base_url=BASE_URL)

    await agent.complete(request())
    await agent.aclose()

    assert route.calls.last.request.headers["authorization"] == f"Bearer {API_KEY}"


def assert_nothing_leaks(error: AgentError) -> None:
    for text in (error.detail, str(error), repr(error)):
        assert API_KEY not in text
        assert "SECRET123" not in text
        assert SECRET_USER_TEXT not in text
        assert SYSTEM_PROMPT not in text


async def test_timeout_is_configured_on_the_client(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, timeout_seconds=12.5)

    await agent.complete(request())
    await agent.aclose()

    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout["read"] == 12.5
    assert timeout["connect"] == 12.5


async def test_base_url_sends_requests_to_a_compatible_server(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post("http://127.0.0.1:11434/v1/chat/completions").respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(model="llama3.2", api_key="ollama", base_url="http://127.0.0.1:11434/v1")

    response = await agent.complete(request())
    await agent.aclose()

    assert response.text.startswith("You have 2 pending tasks")
    assert route.call_count == 1
    assert sent_body(route)["model"] == "llama3.2"


async def test_openai_base_url_environment_variable_is_honoured(
    httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://env-openai.test/v1")
    route = httpx2_mock.post("https://env-openai.test/v1/chat/completions").respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(api_key=API_KEY)

    await agent.complete(request())
    await agent.aclose()

    assert route.call_count == 1


async def test_a_failing_server_gets_one_attempt_plus_the_retry_budget(httpx2_mock: respx.Router) -> None:
    """The first attempt is the agent's own; the SDK's retries take over with what is left of the budget."""
    route = httpx2_mock.post(COMPLETIONS_URL).respond(
        503, headers={"retry-after-ms": "1"}, json=error_body("Overloaded", "server_error")
    )
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=2)

    with pytest.raises(AgentUnavailable, match="server error"):
        await agent.complete(request())
    await agent.aclose()

    assert route.call_count == 3
    assert sent_body(route, 0) == sent_body(route, 1) == sent_body(route, 2)


async def test_a_request_the_server_refuses_is_not_sent_again(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(
        400, json=error_body("Invalid 'messages'", "invalid_request_error", "invalid_value")
    )
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=2)

    with pytest.raises(AgentUnavailable, match="HTTP 400"):
        await agent.complete(request())
    await agent.aclose()

    assert route.call_count == 1


async def test_a_dropped_connection_is_retried_then_answered(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).mock(
        side_effect=[httpcore2.ConnectError("connection reset"), httpx.Response(200, json=TEXT_RESPONSE)]
    )
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=1)

    response = await agent.complete(request())
    await agent.aclose()

    assert response.text == "You have 2 pending tasks: Buy milk and Call mom."
    assert route.call_count == 2


async def test_the_first_attempt_sends_the_sdks_own_headers(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL)

    await agent.complete(request())
    await agent.aclose()

    sent = route.calls.last.request.headers
    assert sent["user-agent"].startswith("AsyncOpenAI/Python")
    assert sent["x-stainless-lang"] == "python"
    assert sent["accept"] == "application/json"
    assert "openai-organization" not in sent


async def test_a_callers_own_client_is_used_through_the_sdk(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(COMPLETIONS_URL).respond(200, json=TEXT_RESPONSE)
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=BASE_URL, max_retries=0, default_headers={"X-Team": "todo"})
    agent = OpenAIChatAgent(client=client)

    response = await agent.complete(request())
    await agent.aclose()
    await client.close()

    assert response.text == "You have 2 pending tasks: Buy milk and Call mom."
    assert route.calls.last.request.headers["x-team"] == "todo"


async def test_a_reply_that_is_not_json_is_an_unavailable_provider(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, text="<html>proxy error</html>")
    agent = OpenAIChatAgent(api_key=API_KEY, base_url=BASE_URL, max_retries=0)

    with pytest.raises(AgentUnavailable, match="not JSON"):
        await agent.complete(request())
    await agent.aclose()


async def test_usage_is_read_with_its_cached_part_and_a_missing_model_is_the_one_asked_for(
    httpx2_mock: respx.Router, agent: OpenAIChatAgent
) -> None:
    """``prompt_tokens`` is all the input, cached tokens included; ``cached_tokens`` is that cached part."""
    usage = {**USAGE, "prompt_tokens": 2006, "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}}
    body = {key: value for key, value in TEXT_RESPONSE.items() if key != "model"}
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json={**body, "usage": usage})

    response = await agent.complete(request())

    assert response.usage == Usage(input_tokens=2006, output_tokens=31, cached_read_tokens=1920)
    assert response.model == "gpt-4o-mini"


async def test_a_server_reporting_no_usage_gives_none(httpx2_mock: respx.Router, agent: OpenAIChatAgent) -> None:
    httpx2_mock.post(COMPLETIONS_URL).respond(200, json={**TEXT_RESPONSE, "usage": None})

    response = await agent.complete(request())

    assert response.usage is None
