"""Properties of ChatService over random sequences of turns and users."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore import AgentRequest, AgentResponse, ChatService, ConversationNotFound, Principal, Role, ToolCall, ToolSpec
from chatcore.fakes import FunctionAgent, InMemoryConversationStore, InMemoryToolRegistry, StaticTokenVerifier
from chatcore.model import JsonValue
from tests.stores import claims_of, reader_of, stored_history

NOTE = ToolSpec("note", "Write a note", {"type": "object"})


async def note(principal: Principal, arguments: Mapping[str, JsonValue]) -> JsonValue:
    return {"owner": principal.user_id, "n": arguments.get("n")}


def agent_for(request: AgentRequest) -> AgentResponse:
    """Asks for as many tool calls as the user's message has characters (mod 3), one step only."""
    last_user = max(i for i, m in enumerate(request.messages) if m.role is Role.USER)
    if len(request.messages) - 1 > last_user:
        return AgentResponse("done")
    count = len(request.messages[last_user].content) % 3
    return AgentResponse("", tuple(ToolCall(f"c{i}", "note", {"n": i}) for i in range(count)))


turns = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol"]),
        st.booleans(),
        st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=6).filter(str.strip),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(turns)
def test_history_is_ordered_scoped_to_its_owner_and_pairs_tool_calls(plan: list[tuple[str, bool, str]]) -> None:
    async def scenario() -> None:
        store = InMemoryConversationStore()
        verifier = StaticTokenVerifier()
        tokens = {user: verifier.issue(user) for user in ("alice", "bob", "carol")}
        tools = InMemoryToolRegistry()
        tools.register(NOTE, note)
        service = ChatService(
            store=store, claims=claims_of(store), agent=FunctionAgent(agent_for), verifier=verifier, tools=tools
        )
        conversations: dict[str, uuid.UUID] = {}
        for user, continue_existing, text in plan:
            existing = conversations.get(user) if continue_existing else None
            reply = await service.chat(tokens[user], user, text, existing)
            conversations.setdefault(user, reply.conversation_id)
            assert all(r.result == {"owner": user, "n": r.arguments["n"]} for r in reply.tool_calls)

        for conversation_id, conversation in store.database.conversations.items():
            stored = store.database.messages[conversation_id]
            assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
            assert all(m.conversation_id == conversation_id for m in stored)
            for other in {"alice", "bob", "carol"} - {conversation.user_id}:
                with pytest.raises(ConversationNotFound):
                    await stored_history(reader_of(store), other, conversation_id, 50)
            open_calls: set[str] = set()
            for message in stored:
                if message.role is Role.TOOL:
                    assert message.tool_call_id in open_calls
                    open_calls.discard(message.tool_call_id)
                else:
                    assert not open_calls
                    open_calls = {c.id for c in message.tool_calls}
            assert not open_calls

    asyncio.run(scenario())
