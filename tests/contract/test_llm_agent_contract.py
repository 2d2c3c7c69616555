"""The LLMAgent contract, over every agent: offline, FunctionAgent, ScriptedAgent, OpenAI and Anthropic.

The provider agents talk over real HTTP to ``FakeProviderServer``, which speaks each API's wire format,
streamed (``"stream": true``: OpenAI's chunks, Anthropic's events) and not. What every agent promises:
``stream`` yields TextDelta and ToolCallDelta pieces and then exactly one AgentResponse, equal to what
``complete`` answers for the same request (text, tool calls, stop reason, usage, model); the pieces add
up to that response; failures are the same domain errors whether the step streams or not, and a failure
in the middle of a stream comes after the pieces before it; closing a stream early releases it. The
second half holds both provider agents to what they share (requests, retries, timeouts, usage with its
cache fields, settings), which each provider's own test file no longer repeats.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anthropic
import openai
import pytest

from chatcore.adapters.anthropic.agent import AnthropicChatAgent
from chatcore.adapters.offline.agent import OfflineTodoAgent
from chatcore.adapters.openai.agent import OpenAIChatAgent
from chatcore.adapters.providers.transports import SpreadConnectionPools
from chatcore.errors import AgentError, AgentRateLimited, AgentTimeout, AgentUnavailable
from chatcore.fakes import FunctionAgent, ScriptedAgent
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
from chatcore.ports import LLMAgent

from ..fake_providers import FakeProviderServer

Reply = Literal["text", "tools"]
Failure = Literal["rate_limit", "server_error", "timeout"]
AGENTS = ["offline", "function", "scripted", "openai", "anthropic"]
PROVIDERS = ["openai", "anthropic"]
KEYS = {"openai": "sk-test-SECRET-openai", "anthropic": "sk-ant-test-SECRET-anthropic"}
SYSTEM_PROMPT = "You are a todo assistant."
ADD_TASK = ToolSpec(
    "add_task",
    "Add a task to the user's list.",
    {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
)
REQUESTS: dict[Reply, AgentRequest] = {
    "text": AgentRequest(SYSTEM_PROMPT, (ChatMessage.user("Hello there"),), (ADD_TASK,)),
    "tools": AgentRequest(SYSTEM_PROMPT, (ChatMessage.user("Add a task to buy milk and to call mom"),), (ADD_TASK,)),
}
SCRIPTED: dict[Reply, AgentResponse] = {
    "text": AgentResponse("Hello! I keep your todo list.", (), "stop"),
    "tools": AgentResponse(
        "On it.",
        (
            ToolCall("call_1", "add_task", {"title": "Buy milk"}),
            ToolCall("call_2", "add_task", {"title": "Call mom", "description": "Sunday"}),
        ),
        "tool_calls",
    ),
}
FAILURES: dict[Failure, AgentError] = {
    "rate_limit": AgentRateLimited("The model is rate limiting requests", provider="scripted", retry_after=7),
    "server_error": AgentUnavailable("The model failed: server error (HTTP 500)", provider="scripted"),
    "timeout": AgentTimeout("The model timed out", provider="scripted"),
}
EXPECTED_FAILURES: dict[Failure, type[AgentError]] = {
    "rate_limit": AgentRateLimited,
    "server_error": AgentUnavailable,
    "timeout": AgentTimeout,
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(retry_after=7, slow_seconds=10.0) as server:
        yield server


@dataclass
class Subject:
    """An agent under test, and how a test makes it fail or sees what its streams hold."""

    name: str
    agent: LLMAgent
    fail_next: Callable[[Failure], None] | None = None
    """Makes the next call fail so; None for an agent that cannot fail (offline)."""
    fail_mid_stream: Callable[[], None] | None = None
    """Makes the next stream fail after its first pieces; None for an agent whose streams cannot."""
    in_flight: Callable[[], int] = lambda: 0
    """Responses the agent holds open (a provider agent's HTTP streams)."""
    closers: list[Callable[[], Any]] = field(default_factory=list)


def provider_agent(name: str, fake: FakeProviderServer, **settings: Any) -> tuple[LLMAgent, SpreadConnectionPools]:
    transport = SpreadConnectionPools()
    agent: OpenAIChatAgent | AnthropicChatAgent
    settings = {"api_key": KEYS[name], "max_retries": 0, "timeout_seconds": 2.0, "transport": transport, **settings}
    if name == "openai":
        agent = OpenAIChatAgent(base_url=f"{fake.url}/v1", **settings)
    else:
        agent = AnthropicChatAgent(base_url=fake.url, **settings)
    return agent, transport


@pytest.fixture(params=AGENTS)
async def subject(request: pytest.FixtureRequest, fake: FakeProviderServer, reply: Reply) -> AsyncIterator[Subject]:
    fake.reset()
    name: str = request.param
    if name == "offline":
        yield Subject(name, OfflineTodoAgent())
    elif name == "function":
        failures: list[AgentError] = []

        def answer(agent_request: AgentRequest) -> AgentResponse:
            if failures:
                raise failures.pop()
            return SCRIPTED[reply]

        async def stream_then_fail(agent_request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
            yield TextDelta("On ")
            raise FAILURES["server_error"]

        function_agent = FunctionAgent(answer)
        subject = Subject(name, function_agent, lambda kind: failures.append(FAILURES[kind]))

        def fail_mid_stream() -> None:
            function_agent.stream_function = stream_then_fail

        subject.fail_mid_stream = fail_mid_stream
        yield subject
    elif name == "scripted":
        scripted = ScriptedAgent([SCRIPTED[reply]])
        yield Subject(name, scripted, lambda kind: scripted.steps.insert(0, FAILURES[kind]))
    else:
        agent, transport = provider_agent(name, fake, timeout_seconds=1.0)

        def fail_next(kind: Failure) -> None:
            fake.fail_next("slow" if kind == "timeout" else kind)

        yield Subject(
            name,
            agent,
            fail_next,
            lambda: fake.fail_next("stream_error"),
            lambda: sum(transport.in_flight),
        )
        assert isinstance(agent, OpenAIChatAgent | AnthropicChatAgent)
        await agent.aclose()


@pytest.fixture(params=["text", "tools"])
def reply(request: pytest.FixtureRequest) -> Reply:
    kind: Reply = request.param
    return kind


async def collect(agent: LLMAgent, agent_request: AgentRequest) -> list[AgentStreamEvent]:
    return [event async for event in agent.stream(agent_request)]


async def read_into(seen: list[AgentStreamEvent], agent: LLMAgent, agent_request: AgentRequest) -> None:
    """The stream's items into ``seen``, as they come (so a test sees what came before a failure)."""
    async for event in agent.stream(agent_request):
        seen.append(event)


async def step(agent: LLMAgent, agent_request: AgentRequest, *, streamed: bool) -> AgentStreamEvent:
    """One step, streamed (its last item) or not."""
    return (await collect(agent, agent_request))[-1] if streamed else await agent.complete(agent_request)


def reassembled(events: list[AgentStreamEvent]) -> tuple[str, list[tuple[str | None, str | None, Any]]]:
    """The text and the tool calls (id, name, arguments) that the pieces of a stream add up to."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, list[Any]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            call = calls.setdefault(event.index, [None, None, ""])
            call[0] = call[0] or event.id
            call[1] = call[1] or event.name
            call[2] += event.arguments
    return text, [(i, n, json.loads(a) if a.strip() else {}) for i, n, a in (calls[k] for k in sorted(calls))]


# --- every agent ---------------------------------------------------------------------------------------------


async def test_a_stream_is_pieces_then_the_response_complete_gives(subject: Subject, reply: Reply) -> None:
    agent_request = REQUESTS[reply]

    events = await collect(subject.agent, agent_request)
    completed = await subject.agent.complete(agent_request)

    *pieces, last = events
    assert isinstance(last, AgentResponse)
    assert all(isinstance(piece, TextDelta | ToolCallDelta) for piece in pieces)
    assert last == completed
    text, calls = reassembled(events)
    assert text == last.text
    assert calls == [(call.id, call.name, dict(call.arguments)) for call in last.tool_calls]
    if reply == "tools":
        assert last.tool_calls, "a request for tools gets tool calls"
    assert subject.in_flight() == 0


async def test_usage_and_the_model_are_reported(subject: Subject, reply: Reply) -> None:
    response = await subject.agent.complete(REQUESTS[reply])

    assert isinstance(response.usage, Usage)
    if subject.name in PROVIDERS:
        assert response.usage.input_tokens > 0
        assert response.usage.output_tokens > 0
        assert response.model
    else:
        assert response.usage == Usage()  # computed here: no tokens spent


async def test_closing_a_stream_early_releases_it(subject: Subject, reply: Reply) -> None:
    stream = subject.agent.stream(REQUESTS[reply])

    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]

    assert isinstance(first, TextDelta | ToolCallDelta)
    assert subject.in_flight() == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_failure_is_the_same_error_streamed_or_not(subject: Subject, reply: Reply, failure: Failure) -> None:
    if subject.fail_next is None:
        assert subject.name == "offline"  # computes its answer: nothing to fail
        return
    subject.fail_next(failure)
    with pytest.raises(AgentError) as completed:
        await subject.agent.complete(REQUESTS[reply])
    subject.fail_next(failure)
    seen: list[AgentStreamEvent] = []
    with pytest.raises(AgentError) as streamed:
        await read_into(seen, subject.agent, REQUESTS[reply])

    assert type(streamed.value) is type(completed.value) is EXPECTED_FAILURES[failure]
    assert streamed.value.detail == completed.value.detail
    assert seen == []
    if failure == "rate_limit":
        assert isinstance(streamed.value, AgentRateLimited)
        assert isinstance(completed.value, AgentRateLimited)
        assert streamed.value.retry_after == completed.value.retry_after == 7
    assert subject.in_flight() == 0
    assert (await subject.agent.complete(REQUESTS[reply])).text is not None  # the next call goes through


async def test_a_failure_mid_stream_comes_after_the_pieces_before_it(subject: Subject, reply: Reply) -> None:
    if subject.fail_mid_stream is None:
        assert subject.name in ("offline", "scripted")  # they compute a step at once: it cannot fail halfway
        return
    subject.fail_mid_stream()
    seen: list[AgentStreamEvent] = []

    with pytest.raises(AgentUnavailable) as failed:
        await read_into(seen, subject.agent, REQUESTS[reply])

    assert seen, "the pieces before the failure were passed on"
    assert not any(isinstance(event, AgentResponse) for event in seen)
    for secret in KEYS.values():
        assert secret not in repr(failed.value)
    assert subject.in_flight() == 0


# --- what both provider agents share -------------------------------------------------------------------------


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest, fake: FakeProviderServer) -> str:
    fake.reset()
    name: str = request.param
    return name


@pytest.fixture
async def closing() -> AsyncIterator[list[OpenAIChatAgent | AnthropicChatAgent]]:
    agents: list[OpenAIChatAgent | AnthropicChatAgent] = []
    yield agents
    for agent in agents:
        await agent.aclose()


def new_agent(
    provider: str, fake: FakeProviderServer, closing: list[OpenAIChatAgent | AnthropicChatAgent], **settings: Any
) -> OpenAIChatAgent | AnthropicChatAgent:
    agent, _ = provider_agent(provider, fake, **settings)
    assert isinstance(agent, OpenAIChatAgent | AnthropicChatAgent)
    closing.append(agent)
    return agent


async def test_a_streamed_request_is_the_same_request_asking_for_a_stream(
    provider: str, fake: FakeProviderServer, closing: list[OpenAIChatAgent | AnthropicChatAgent]
) -> None:
    agent = new_agent(provider, fake, closing)

    await collect(agent, REQUESTS["tools"])
    await agent.complete(REQUESTS["tools"])

    streamed, completed = fake.bodies(provider)  # type: ignore[arg-type]
    assert streamed.pop("stream") is True
    if provider == "openai":  # the usage of a streamed step comes only when asked for
        assert streamed.pop("stream_options") == {"include_usage": True}
    assert streamed == completed


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_usage_is_the_whole_input_with_its_cached_parts(
    provider: str, closing: list[OpenAIChatAgent | AnthropicChatAgent], streamed: bool
) -> None:
    """OpenAI counts cached tokens inside ``prompt_tokens`` and bills no cache writes; Anthropic's
    ``input_tokens`` leave out both cache reads and writes. Either way ``input_tokens`` is all the input."""
    with FakeProviderServer(cache_read_tokens=9, cache_write_tokens=4) as cached:
        agent = new_agent(provider, cached, closing)
        response = await step(agent, REQUESTS["text"], streamed=streamed)
        [body] = cached.bodies(provider)  # type: ignore[arg-type]

    prompt_tokens = len(json.dumps(body["messages"])) // 4  # as the fake counts them
    assert isinstance(response, AgentResponse)
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_tokens
    assert response.usage.cached_read_tokens == 9
    assert response.usage.cache_write_tokens == (4 if provider == "anthropic" else 0)
    assert response.usage.output_tokens > 0
    assert response.model == agent.model


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_server_error_is_retried_by_the_sdk_and_none_without_retries(
    provider: str, fake: FakeProviderServer, closing: list[OpenAIChatAgent | AnthropicChatAgent], streamed: bool
) -> None:
    retrying = new_agent(provider, fake, closing, max_retries=1)
    once = new_agent(provider, fake, closing, max_retries=0)

    fake.fail_next("server_error")
    response = (
        (await collect(retrying, REQUESTS["text"]))[-1] if streamed else await retrying.complete(REQUESTS["text"])
    )
    assert isinstance(response, AgentResponse)
    assert len(fake.requests) == 2

    fake.fail_next("server_error")
    with pytest.raises(AgentUnavailable, match=r"server error \(HTTP 500\)"):
        await step(once, REQUESTS["text"], streamed=streamed)
    assert len(fake.requests) == 3


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_refused_connection_is_unavailable_naming_the_provider(
    provider: str, closing: list[OpenAIChatAgent | AnthropicChatAgent], streamed: bool
) -> None:
    with FakeProviderServer() as gone:
        pass  # stopped: its port now refuses connections
    agent = new_agent(provider, gone, closing)

    with pytest.raises(AgentUnavailable) as failed:
        await step(agent, REQUESTS["text"], streamed=streamed)

    name = {"openai": "OpenAI", "anthropic": "Anthropic"}[provider]
    assert failed.value.detail == f"{name} request failed: could not connect"
    assert failed.value.provider == provider
    assert KEYS[provider] not in repr(failed.value)


SDK_ERRORS = {"openai": openai.APITimeoutError, "anthropic": anthropic.APITimeoutError}


async def test_a_timeout_is_agent_timeout_caused_by_the_sdks_timeout(
    provider: str, fake: FakeProviderServer, closing: list[OpenAIChatAgent | AnthropicChatAgent]
) -> None:
    agent = new_agent(provider, fake, closing, timeout_seconds=0.3)
    fake.fail_next("slow")

    with pytest.raises(AgentTimeout) as failed:
        await agent.complete(REQUESTS["text"])

    assert isinstance(failed.value.__cause__, SDK_ERRORS[provider])
    assert failed.value.provider == provider


def test_nonsense_settings_are_refused(provider: str) -> None:
    agent_class = OpenAIChatAgent if provider == "openai" else AnthropicChatAgent
    nonsense: tuple[tuple[str, Any], ...] = (("max_tokens", 0), ("timeout_seconds", 0), ("max_retries", -1))
    for setting, value in nonsense:
        with pytest.raises(ValueError, match=setting):
            agent_class(api_key=KEYS[provider], **{setting: value})


def test_missing_credentials_are_a_configuration_error_at_construction(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("ANTHROPIC_PROFILE", "ANTHROPIC_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    agent_class = OpenAIChatAgent if provider == "openai" else AnthropicChatAgent

    with pytest.raises(ValueError, match=f"{provider.upper()}_API_KEY"):
        agent_class(base_url="http://127.0.0.1:9")


async def test_an_agent_is_named_for_its_provider_and_closes_only_its_own_client(provider: str) -> None:
    own: OpenAIChatAgent | AnthropicChatAgent
    borrowing: OpenAIChatAgent | AnthropicChatAgent
    shared: openai.AsyncOpenAI | anthropic.AsyncAnthropic
    if provider == "openai":
        shared = openai.AsyncOpenAI(api_key=KEYS[provider])
        own, borrowing = OpenAIChatAgent(api_key=KEYS[provider]), OpenAIChatAgent(client=shared)
    else:
        shared = anthropic.AsyncAnthropic(api_key=KEYS[provider])
        own, borrowing = AnthropicChatAgent(api_key=KEYS[provider]), AnthropicChatAgent(client=shared)

    await own.aclose()
    await borrowing.aclose()

    assert own.provider == borrowing.provider == provider
    assert own._client.is_closed()
    assert not shared.is_closed()
    await shared.close()
