"""The AI SDK and AG-UI endpoints over HTTP on PostgreSQL: wire details, chat ids, errors, resume, regenerate.

What the real clients make of these streams is tested with the clients themselves (``test_frontends.py``,
driving ``tests/frontends`` in Node); here the server's side of the contract is checked byte by byte:
headers, the chunk order, the statuses of bad requests, which conversation a chat id reaches.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from chatcore.errors import AgentUnavailable
from chatcore.fakes import ScriptedAgent

from .conftest import AppClient, auth
from .test_http_streaming import GatedAgent, served

pytestmark = pytest.mark.integration


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def submit(chat_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """A body as DefaultChatTransport sends it for ``sendMessage({text})``."""
    return {
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [
            {"id": "old", "role": "assistant", "parts": [{"type": "text", "text": "ignored history"}]},
            {"id": uuid.uuid4().hex[:16], "role": "user", "parts": [{"type": "text", "text": text}]},
        ],
        **extra,
    }


def chunks_of(text: str) -> list[Any]:
    """The ``data:`` payloads of a UI message stream, ``[DONE]`` as the string."""
    assert text.endswith("\n\n")
    payloads = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        payloads.append(payload if payload == "[DONE]" else json.loads(payload))
    return payloads


async def test_a_message_streams_as_ui_message_chunks_in_the_order_the_ai_sdk_accepts(app_client: AppClient) -> None:
    user = new_user()
    async with app_client() as client:
        response = await client.post(
            f"/api/{user}/ai-sdk/chat", json=submit("chat-1", "Add a task to buy milk"), headers=auth(user)
        )
        again = await client.post(
            f"/api/{user}/ai-sdk/chat", json=submit("chat-1", "Show me all my tasks"), headers=auth(user)
        )
        conversations = (await client.get(f"/api/{user}/conversations", headers=auth(user))).json()["items"]
        history = (
            await client.get(f"/api/{user}/conversations/{conversations[0]['id']}/messages", headers=auth(user))
        ).json()["items"]

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    *chunks, done = chunks_of(response.text)
    assert done == "[DONE]"
    kinds = [c["type"] for c in chunks]
    text_parts = kinds[kinds.index("text-start") + 1 : kinds.index("text-end")]
    assert kinds == [
        "start",
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "text-start",
        *text_parts,
        "text-end",
        "finish-step",
        "finish",
    ]
    assert set(text_parts) == {"text-delta"}
    start, _, tool_start, tool_input, tool_output, *_ = chunks
    assert tool_start == {"type": "tool-input-start", "toolCallId": tool_input["toolCallId"], "toolName": "add_task"}
    assert tool_input["input"] == {"title": "Buy milk"}
    assert tool_output["output"]["status"] == "created"
    finish = chunks[-1]
    assert {k: v for k, v in finish.items() if k != "messageMetadata"} == {"type": "finish", "finishReason": "stop"}
    metadata = finish["messageMetadata"]  # the start part's keys, and the turn's usage (the offline agent's: zero)
    assert metadata == {**start["messageMetadata"], "usage": metadata["usage"]}
    assert metadata["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "model_calls": 2,
        "cost_usd": 0.0,
    }
    reply = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    # One conversation for the chat id, titled by its first message; the reply's id is its final message's.
    assert [c["title"] for c in conversations] == ["Add a task to buy milk"]
    assert start["messageMetadata"]["conversationId"] == conversations[0]["id"]
    assert [(m["role"], m["content"]) for m in history[:3]] == [
        ("user", "Add a task to buy milk"),
        ("assistant", ""),
        ("assistant", reply),
    ]
    assert [m["content"] for m in history if m["role"] == "user"] == ["Add a task to buy milk", "Show me all my tasks"]
    assert start["messageId"] == history[2]["id"]
    assert again.status_code == 200


async def test_the_chat_as_ui_messages_for_use_chat_after_a_reload(app_client: AppClient) -> None:
    user = new_user()
    async with app_client() as client:
        await client.post(
            f"/api/{user}/ai-sdk/chat", json=submit("chat-2", "Add a task to buy milk"), headers=auth(user)
        )
        messages = await client.get(f"/api/{user}/ai-sdk/chat/chat-2/messages", headers=auth(user))
        unknown = await client.get(f"/api/{user}/ai-sdk/chat/never-used/messages", headers=auth(user))
        other = new_user()
        not_theirs = await client.get(f"/api/{other}/ai-sdk/chat/chat-2/messages", headers=auth(other))

    assert messages.status_code == 200
    user_message, reply = messages.json()
    assert user_message["role"] == "user"
    assert user_message["parts"] == [{"type": "text", "text": "Add a task to buy milk"}]
    assert reply["role"] == "assistant"
    step, tool, step_again, text = reply["parts"]
    assert (step, step_again) == ({"type": "step-start"}, {"type": "step-start"})
    assert tool["type"] == "tool-add_task"
    assert (tool["state"], tool["input"], tool["output"]["title"]) == (
        "output-available",
        {"title": "Buy milk"},
        "Buy milk",
    )
    assert text["type"] == "text"
    assert "Buy milk" in text["text"]
    assert (unknown.json(), not_theirs.json()) == ([], [])


async def test_a_chat_id_reaches_only_the_users_own_conversations(app_client: AppClient) -> None:
    alice, bob = new_user(), new_user()
    async with app_client() as client:
        plain = await client.post(f"/api/{alice}/chat", json={"message": "Add a task to buy milk"}, headers=auth(alice))
        conversation_id = plain.json()["conversation_id"]
        # Alice names her conversation by its id; Bob names it too, and gets a conversation of his own.
        mine = await client.post(
            f"/api/{alice}/ai-sdk/chat", json=submit(conversation_id, "Show me all my tasks"), headers=auth(alice)
        )
        theirs = await client.post(
            f"/api/{bob}/ai-sdk/chat", json=submit(conversation_id, "Show me all my tasks"), headers=auth(bob)
        )
        alices = (
            await client.get(f"/api/{alice}/conversations/{conversation_id}/messages", headers=auth(alice))
        ).json()
        bobs = (await client.get(f"/api/{bob}/conversations", headers=auth(bob))).json()["items"]

    assert (mine.status_code, theirs.status_code) == (200, 200)
    assert chunks_of(mine.text)[0]["messageMetadata"]["conversationId"] == conversation_id
    assert [m["content"] for m in alices["items"] if m["role"] == "user"] == [
        "Add a task to buy milk",
        "Show me all my tasks",
    ]
    assert len(bobs) == 1
    assert bobs[0]["id"] != conversation_id
    assert chunks_of(theirs.text)[0]["messageMetadata"]["conversationId"] == bobs[0]["id"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "JSON object"),
        (b"[]", "Invalid request body"),
        (b'{"id": 3, "messages": []}', "Invalid request body"),
        (b'{"messages": []}', "Invalid request body"),
        (b'{"id": "c", "messages": []}', "messages must not be empty"),
        (b'{"id": "c", "messages": [{"role": "user", "parts": "no"}]}', "Invalid request body"),
        (b'{"id": "c", "trigger": "guess", "messages": []}', "trigger"),
        (b'{"id": "", "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]}', "chat id"),
        (b'{"id": "c", "messages": [{"role": "user", "parts": [{"type": "file", "url": "x"}]}]}', "no text"),
        (b'{"id": "c", "messages": [{"role": "assistant", "parts": [{"type": "text", "text": "x"}]}]}', "approval"),
        (b'{"id": "c", "messages": [{"role": "user", "parts": [{"type": "text", "text": "a\\u0000b"}]}]}', "NUL"),
        (
            b'{"id": "c", "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi", "x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}]}]}",
            "nested too deeply",
        ),
    ],
)
async def test_malformed_bodies_are_400_with_a_detail_and_store_nothing(
    app_client: AppClient, body: bytes, detail: str
) -> None:
    user = new_user()
    async with app_client() as client:
        response = await client.post(
            f"/api/{user}/ai-sdk/chat", content=body, headers={**auth(user), "content-type": "application/json"}
        )
        ag_ui = await client.post(
            f"/api/{user}/ag-ui", content=body, headers={**auth(user), "content-type": "application/json"}
        )
        conversations = (await client.get(f"/api/{user}/conversations", headers=auth(user))).json()["items"]

    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]
    assert ag_ui.status_code == 400, ag_ui.text
    assert conversations == []


async def test_auth_rules_are_the_chats(app_client: AppClient) -> None:
    user = new_user()
    async with app_client() as client:
        anonymous = await client.post(f"/api/{user}/ai-sdk/chat", json=submit("c", "hi"))
        other_path = await client.post(f"/api/{new_user()}/ai-sdk/chat", json=submit("c", "hi"), headers=auth(user))
        resume = await client.get(f"/api/{user}/ai-sdk/chat/c/stream")
        ag_ui = await client.post(f"/api/{user}/ag-ui", json={}, headers=auth(new_user()))

    assert (anonymous.status_code, other_path.status_code, resume.status_code, ag_ui.status_code) == (
        401,
        403,
        401,
        403,
    )


async def test_a_failure_before_the_stream_is_its_status_and_after_it_an_error_chunk(app_client: AppClient) -> None:
    user = new_user()
    async with app_client(agent=ScriptedAgent([AgentUnavailable(provider="scripted")])) as client:
        failed = await client.post(f"/api/{user}/ai-sdk/chat", json=submit("chat-3", "hi"), headers=auth(user))
        unknown = await client.post(
            f"/api/{user}/ai-sdk/chat",
            json={"id": "never-used", "messages": [], "trigger": "regenerate-message"},
            headers=auth(user),
        )
        ag_ui = await client.post(
            f"/api/{user}/ag-ui",
            json={"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "user", "content": "hi"}]},
            headers=auth(user),
        )

    chunks = chunks_of(failed.text)
    assert [c if c == "[DONE]" else c["type"] for c in chunks] == ["start", "start-step", "error", "[DONE]"]
    assert chunks[2] == {"type": "error", "errorText": "The model provider is unavailable"}
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "Conversation not found"
    events = [json.loads(block[len("data: ") :]) for block in ag_ui.text.strip().split("\n\n")]
    assert [e["type"] for e in events] == ["RUN_STARTED", "RUN_ERROR"]
    assert events[-1] == {"type": "RUN_ERROR", "message": "The model provider is unavailable", "code": "502"}


async def test_a_busy_conversation_is_a_409_before_anything_streams(postgres_url: str) -> None:
    user = new_user()
    agent = GatedAgent()
    async with (
        served(postgres_url, agent, turn_wait_seconds=0.5) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        client.stream(
            "POST", f"/api/{user}/ai-sdk/chat", json=submit("busy", "Say hello"), headers=auth(user)
        ) as response,
    ):
        async for _ in response.aiter_bytes():
            break
        async with asyncio.timeout(10):
            await agent.waiting.wait()
        busy = await client.post(f"/api/{user}/ai-sdk/chat", json=submit("busy", "And again"), headers=auth(user))
        agent.gate.set()

    assert busy.status_code == 409, busy.text
    assert busy.headers["retry-after"]
    assert busy.json()["detail"] == "Another turn is in progress on this conversation"


def ag_ui_events(text: str) -> list[Any]:
    return [json.loads(block[len("data: ") :]) for block in text.strip().split("\n\n")]


async def test_an_approval_round_trip_over_the_ai_sdk_and_ag_ui(app_client: AppClient) -> None:
    user = new_user()
    async with app_client(approval_tools=("delete_task",)) as client:
        await client.post(f"/api/{user}/ai-sdk/chat", json=submit("hitl", "Add a task to buy eggs"), headers=auth(user))
        asked = chunks_of(
            (
                await client.post(
                    f"/api/{user}/ai-sdk/chat", json=submit("hitl", "Delete the eggs task"), headers=auth(user)
                )
            ).text
        )
        [request] = [c for c in asked[:-1] if c["type"] == "tool-approval-request"]
        reply_id = asked[0]["messageId"]
        stored = (await client.get(f"/api/{user}/ai-sdk/chat/hitl/messages", headers=auth(user))).json()
        pending = [p for p in stored[-1]["parts"] if p.get("state") == "approval-requested"]
        # What addToolApprovalResponse sends: the assistant message with the part approval-responded.
        answered = {
            "id": "hitl",
            "trigger": "submit-message",
            "messageId": reply_id,
            "messages": [
                {
                    "id": reply_id,
                    "role": "assistant",
                    "parts": [
                        {
                            "type": "tool-delete_task",
                            "toolCallId": request["toolCallId"],
                            "state": "approval-responded",
                            "input": {"task_id": 999},  # never used: the stored arguments run
                            "approval": {"id": request["approvalId"], "approved": True},
                        }
                    ],
                }
            ],
        }
        continued = chunks_of((await client.post(f"/api/{user}/ai-sdk/chat", json=answered, headers=auth(user))).text)
        again = await client.post(f"/api/{user}/ai-sdk/chat", json=answered, headers=auth(user))
        tasks = (await client.get(f"/api/{user}/tasks", headers=auth(user))).json()

        run = {"threadId": "hitl-thread", "runId": "r1", "messages": [{"id": "1", "role": "user", "content": "x"}]}
        run["messages"][0]["content"] = "Add a task to call mom"
        await client.post(f"/api/{user}/ag-ui", json=run, headers=auth(user))
        run = {**run, "runId": "r2", "messages": [{"id": "2", "role": "user", "content": "Delete the call mom task"}]}
        interrupted = ag_ui_events((await client.post(f"/api/{user}/ag-ui", json=run, headers=auth(user))).text)
        [interrupt] = interrupted[-1]["outcome"]["interrupts"]
        resume = {**run, "runId": "r3", "resume": [{"interruptId": interrupt["id"], "status": "cancelled"}]}
        resumed = [
            json.loads(b[6:])
            for b in (await client.post(f"/api/{user}/ag-ui", json=resume, headers=auth(user)))
            .text.strip()
            .split("\n\n")
        ]
        left = (await client.get(f"/api/{user}/tasks", headers=auth(user))).json()

    assert request["approvalId"] == request["toolCallId"]
    assert {"type": "finish", "finishReason": "tool-calls"}.items() <= asked[-2].items()
    assert [p["toolCallId"] for p in pending] == [request["toolCallId"]]
    assert continued[0]["messageId"] == reply_id  # the client's message goes on
    kinds = [c["type"] for c in continued[:-1]]
    assert "tool-input-start" not in kinds  # the client has the call already
    assert {"type": "tool-output-available", "toolCallId": request["toolCallId"]}.items() <= next(
        c for c in continued if c["type"] == "tool-output-available"
    ).items()
    assert {"type": "finish", "finishReason": "stop"}.items() <= continued[-2].items()
    assert tasks == []
    assert again.status_code in (200, 409), again.text  # the same decision again runs nothing twice
    assert interrupt["reason"] == "tool_approval"
    assert interrupted[-1]["outcome"]["type"] == "interrupt"
    assert resumed[0]["type"] == "RUN_STARTED"
    assert resumed[-1]["outcome"] == {"type": "success"}
    assert [t["title"] for t in left] == ["Call mom"]
