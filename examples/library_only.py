"""chatcore as a library, no server: a ChatService with the in-memory fakes and a tool of your own.

Run it with `python examples/library_only.py` (after `pip install chatcore`). The fakes stand in for the model,
the database and the token verifier; swap each for a real adapter in your own code (docs/library.md).
"""

from __future__ import annotations

import asyncio

from chatcore import ChatService, Principal
from chatcore.fakes import InMemoryConversationStore, InMemoryTurnClaimStore, ScriptedAgent, StaticTokenVerifier
from chatcore.model import AgentResponse, ToolCall
from chatcore.tools import FunctionToolRegistry, tool

BALANCES = {"alice": 120.50}


@tool
def get_balance(principal: Principal) -> dict[str, object]:
    """The user's account balance, in euros."""
    return {"user": principal.user_id, "balance": BALANCES.get(principal.user_id, 0.0)}


async def main() -> None:
    verifier = StaticTokenVerifier()
    token = verifier.issue("alice")
    # The scripted model asks for the tool, then answers; a real one decides from the tool's schema.
    agent = ScriptedAgent(
        [
            AgentResponse("", tool_calls=(ToolCall("call-1", "get_balance", {}),)),
            AgentResponse("Your balance is 120.50 EUR."),
        ]
    )
    store = InMemoryConversationStore()
    service = ChatService(
        store=store,
        claims=InMemoryTurnClaimStore(store.database),  # the running turn's lease, over the same in-memory database
        agent=agent,
        verifier=verifier,
        tools=FunctionToolRegistry([get_balance]),
    )
    reply = await service.chat(token, "alice", "What is my balance?")
    for call in reply.tool_calls:
        print(f"tool {call.name}({call.arguments}) -> {call.result}")
    print(f"assistant: {reply.response}")
    print(f"conversation: {reply.conversation_id}")


if __name__ == "__main__":
    asyncio.run(main())
