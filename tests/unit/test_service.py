"""ChatService with the in-memory adapters: the turn, its errors and its tool loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import pytest

from chatcore import (
    AgentResponse,
    AgentTimeout,
    ChatPolicy,
    ChatService,
    ConversationNotFound,
    Forbidden,
    InvalidMessage,
    MessageStatus,
    Principal,
    Role,
    ToolCall,
    ToolError,
    ToolSpec,
    Unauthenticated,
)
from chatcore.fakes import InMemoryConversationStore, InMemoryToolRegistry, ScriptedAgent, StaticTokenVerifier
from chatcore.model import JsonValue
from tests.stores import claims_of, reader_of, stored_history

ECHO = ToolSpec("echo", "Echo the arguments", {"type": "object", "properties": {"x": {"type": "integer"}}})


async def echo(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
    return {"user": principal.user_id, "x": arguments.get("x")}


def build(agent: ScriptedAgent, policy: ChatPolicy | None = None) -> tuple[ChatService, InMemoryConversationStore, str]:
    store = InMemoryConversationStore()
    verifier = StaticTokenVerifier()
    token = verifier.issue("alice", email="alice@example.com")
    tools = InMemoryToolRegistry()
    tools.register(ECHO, echo)
    return (
        ChatService(store=store, claims=claims_of(store), agent=agent, verifier=verifier, tools=tools, policy=policy),
        store,
        token,
    )


async def test_turn_stores_user_and_assistant_messages_in_order() -> None:
    service, store, token = build(ScriptedAgent([AgentResponse("Hello!")]))
    reply = await service.chat(token, "alice", "Hi there")
    stored = await stored_history(reader_of(store), "alice", reply.conversation_id, 10)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]
    assert [m.seq for m in stored] == [1, 2]
    assert stored[-1].id == reply.message_id
    assert reply.response == "Hello!"
    assert reply.tool_calls == ()


async def test_tool_loop_runs_calls_bound_to_the_user_and_reports_results() -> None:
    call = ToolCall("call_1", "echo", {"x": 7})
    agent = ScriptedAgent([AgentResponse("", (call,)), AgentResponse("Done")])
    service, store, token = build(agent)
    reply = await service.chat(token, "alice", "echo 7")
    assert reply.response == "Done"
    assert [(r.name, r.result) for r in reply.tool_calls] == [("echo", {"user": "alice", "x": 7})]
    stored = await stored_history(reader_of(store), "alice", reply.conversation_id, 10)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert stored[2].tool_call_id == "call_1"
    # The second model step saw the call and its result.
    assert [m.role for m in agent.requests[1].messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]


async def test_unknown_tool_becomes_an_error_result_not_a_failed_turn() -> None:
    agent = ScriptedAgent([AgentResponse("", (ToolCall("c", "nope", {}),)), AgentResponse("Sorry")])
    service, _, token = build(agent)
    reply = await service.chat(token, "alice", "do it")
    assert reply.tool_calls[0].error is not None
    assert "nope" in reply.tool_calls[0].error


async def test_step_limit_ends_the_turn_honestly() -> None:
    agent = ScriptedAgent([AgentResponse("", (ToolCall("c", "echo", {"x": 1}),))])
    service, _, token = build(agent, ChatPolicy(max_tool_steps=3))
    reply = await service.chat(token, "alice", "loop forever")
    assert len(agent.requests) == 3
    assert "3 tool steps" in reply.response


async def test_authentication_and_ownership() -> None:
    service, _, token = build(ScriptedAgent([AgentResponse("ok")]))
    with pytest.raises(Unauthenticated):
        await service.chat(None, "alice", "hi")
    with pytest.raises(Unauthenticated):
        await service.chat("forged", "alice", "hi")
    with pytest.raises(Forbidden):
        await service.chat(token, "bob", "hi")
    with pytest.raises(ConversationNotFound):
        await service.chat(token, "alice", "hi", uuid.uuid4())


@pytest.mark.parametrize("message", ["", "   \n\t", "a\x00b", "x" * 32_001])
async def test_invalid_messages_are_refused(message: str) -> None:
    service, _, token = build(ScriptedAgent([AgentResponse("ok")]))
    with pytest.raises(InvalidMessage):
        await service.chat(token, "alice", message)


async def test_model_failure_keeps_the_user_message_marked_unanswered() -> None:
    service, store, token = build(ScriptedAgent([AgentResponse("first"), AgentTimeout()]))
    first = await service.chat(token, "alice", "one")
    with pytest.raises(AgentTimeout) as caught:
        await service.chat(token, "alice", "two", first.conversation_id)
    assert caught.value.conversation_id == first.conversation_id
    stored = await stored_history(reader_of(store), "alice", first.conversation_id, 10)
    assert [(m.content, m.status) for m in stored][-1] == ("two", MessageStatus.UNANSWERED)


async def test_slow_tool_times_out_into_an_error_result() -> None:
    async def slow(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
        await asyncio.sleep(5)
        raise ToolError("unreachable")

    agent = ScriptedAgent([AgentResponse("", (ToolCall("c", "slow", {}),)), AgentResponse("gave up")])
    service, _, token = build(agent, ChatPolicy(tool_timeout_seconds=0.01))
    assert isinstance(service.tools, InMemoryToolRegistry)
    service.tools.register(ToolSpec("slow", "slow", {"type": "object"}), slow)
    reply = await service.chat(token, "alice", "be slow")
    assert reply.tool_calls[0].error is not None
    assert "timed out" in reply.tool_calls[0].error


async def test_nul_characters_from_the_model_never_reach_the_store() -> None:
    call = ToolCall("c\x00", "echo", {"x": 1, "note": "a\x00b"})
    agent = ScriptedAgent([AgentResponse("", (call,)), AgentResponse("bad\x00text")])
    service, store, token = build(agent)
    reply = await service.chat(token, "alice", "hi")
    stored = await stored_history(reader_of(store), "alice", reply.conversation_id, 10)
    assert reply.response == "bad\ufffdtext"
    assert not any("\x00" in m.content or "\x00" in str(m.tool_calls) for m in stored)
