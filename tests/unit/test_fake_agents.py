"""FunctionAgent and ScriptedAgent: zero-token usage unless scripted, and FunctionAgent's streaming hook."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatcore.errors import AgentUnavailable
from chatcore.fakes import FunctionAgent, ScriptedAgent
from chatcore.model import AgentRequest, AgentResponse, AgentStreamEvent, ChatMessage, TextDelta, Usage

REQUEST = AgentRequest("", (ChatMessage.user("hi"),), ())


async def test_a_response_without_usage_is_reported_as_zero_tokens_and_one_with_usage_keeps_it() -> None:
    billed = AgentResponse("paid", usage=Usage(10, 2), model="gpt-test")
    scripted = ScriptedAgent([AgentResponse("free"), billed])

    assert (await scripted.complete(REQUEST)).usage == Usage()
    assert await scripted.complete(REQUEST) == billed
    assert (await FunctionAgent(lambda _: AgentResponse("free")).complete(REQUEST)).usage == Usage()
    streamed = [event async for event in FunctionAgent(lambda _: billed).stream(REQUEST)]
    assert streamed[-1] == billed


async def test_a_stream_function_decides_how_a_step_streams_and_what_complete_answers() -> None:
    async def slowly(request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        yield TextDelta("Hel")
        yield TextDelta("lo")
        yield AgentResponse("Hello", stop_reason="stop")

    agent = FunctionAgent(stream_function=slowly)

    assert [event async for event in agent.stream(REQUEST)] == [
        TextDelta("Hel"),
        TextDelta("lo"),
        AgentResponse("Hello", stop_reason="stop", usage=Usage()),
    ]
    assert await agent.complete(REQUEST) == AgentResponse("Hello", stop_reason="stop", usage=Usage())
    assert agent.requests == [REQUEST, REQUEST]


async def test_a_stream_function_can_fail_halfway() -> None:
    async def failing(request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        yield TextDelta("Hel")
        raise AgentUnavailable("gone", provider="function")

    seen: list[AgentStreamEvent] = []

    async def read_all() -> None:
        async for event in FunctionAgent(stream_function=failing).stream(REQUEST):
            seen.append(event)

    with pytest.raises(AgentUnavailable):
        await read_all()
    assert seen == [TextDelta("Hel")]


async def test_a_stream_function_must_end_with_exactly_one_response() -> None:
    async def endless(request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        yield TextDelta("no answer")

    async def twice(request: AgentRequest) -> AsyncIterator[AgentStreamEvent]:
        yield AgentResponse("one")
        yield AgentResponse("two")

    for broken in (endless, twice):
        with pytest.raises(ValueError, match="AgentResponse"):
            await FunctionAgent(stream_function=broken).complete(REQUEST)


def test_a_function_agent_needs_something_to_answer_with() -> None:
    with pytest.raises(ValueError, match="function"):
        FunctionAgent()
