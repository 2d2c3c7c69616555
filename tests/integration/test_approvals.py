"""A human in the loop over HTTP on PostgreSQL: tool calls that wait for the user's approval.

The app is built by the container from Settings (``approval_tools`` is CHATCORE_APPROVAL_TOOLS), with the
offline agent, or with the OpenAI and Anthropic adapters talking to ``FakeProviderServer``, whose requests
show exactly what the model was sent after a decision. Replicas and kills: ``test_approval_replicas.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.tables import messages
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore

from ..fake_providers import FakeProviderServer, Provider
from .conftest import AppClient, auth

pytestmark = pytest.mark.integration

APPROVALS = {"approval_tools": ("delete_task",)}
Client = AsyncTestClient[Any]


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def chat(client: Client, user: str, message: str, conversation_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = await client.post(f"/api/{user}/chat", json=body, headers=auth(user))
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def decide(client: Client, user: str, conversation_id: str, *decisions: dict[str, Any], **headers: str) -> Any:
    return await client.post(
        f"/api/{user}/conversations/{conversation_id}/approvals",
        json={"decisions": list(decisions)},
        headers={**auth(user), **headers},
    )


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def titles(engine: AsyncEngine, user: str) -> list[str]:
    return [task.title for task in await SqlAlchemyTaskStore(engine).list(user)]


async def ask_to_delete_the_meeting(client: Client, user: str) -> tuple[str, dict[str, Any]]:
    """A task named 'Team meeting', then "Delete the meeting task": list_tasks runs, delete_task waits."""
    conversation_id = (await chat(client, user, "Add a task called Team meeting"))["conversation_id"]
    asked = await chat(client, user, "Delete the meeting task", conversation_id)
    return conversation_id, asked


def call_in(page: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A tool call as the history API shows it."""
    return next(c for item in page["items"] for c in item["tool_calls"] if c["id"] == call_id)


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        found.append((fields["event"], json.loads(fields["data"])))
    return found


# --- the offline agent's delete flow ------------------------------------------------------------------------------


async def test_an_approved_delete_runs_once_with_the_stored_arguments_and_the_reply_says_so(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client(**APPROVALS) as client:
        conversation_id, asked = await ask_to_delete_the_meeting(client, user)
        [pending] = asked["pending_approvals"]
        task_id = pending["arguments"]["task_id"]
        assert asked["status"] == "awaiting_approval"
        assert pending == {"id": pending["id"], "name": "delete_task", "arguments": {"task_id": task_id}}
        assert [c["name"] for c in asked["tool_calls"]] == ["list_tasks"]
        assert await titles(pg_engine, user) == ["Team meeting"], "nothing deleted before the approval"

        detail = ok(await client.get(f"/api/{user}/conversations/{conversation_id}", headers=auth(user)))
        assert (detail["id"], detail["awaiting_approval"], detail["pending_approvals"]) == (
            conversation_id,
            True,
            [pending],
        )
        [listed] = ok(await client.get(f"/api/{user}/conversations", headers=auth(user)))["items"]
        assert listed["awaiting_approval"] is True
        page = ok(await client.get(f"/api/{user}/conversations/{conversation_id}/messages", headers=auth(user)))
        waiting = call_in(page, pending["id"])
        assert (waiting["name"], waiting["status"], waiting["result"]) == ("delete_task", "awaiting_approval", None)
        assert waiting["approval"]["status"] == "pending"
        assert [c["name"] for c in page["items"][-2]["tool_calls"]] == ["list_tasks"]
        assert "status" not in page["items"][-2]["tool_calls"][0], "a call that ran shows no status"

        approved = await decide(client, user, conversation_id, {"tool_call_id": pending["id"], "approved": True})
        done = ok(approved)
        again = await decide(client, user, conversation_id, {"tool_call_id": pending["id"], "approved": True})
        changed = await decide(client, user, conversation_id, {"tool_call_id": pending["id"], "approved": False})
        detail = ok(await client.get(f"/api/{user}/conversations/{conversation_id}", headers=auth(user)))
        page = ok(await client.get(f"/api/{user}/conversations/{conversation_id}/messages", headers=auth(user)))

    assert done["status"] == "complete"
    assert done["pending_approvals"] == []
    assert done["response"] == f"I've deleted 'Team meeting' (task {task_id})."
    assert await titles(pg_engine, user) == []
    lookup, delete = done["tool_calls"]
    assert lookup["name"] == "list_tasks"
    assert (delete["id"], delete["arguments"]) == (pending["id"], {"task_id": task_id})
    assert delete["result"] == {"task_id": task_id, "status": "deleted", "title": "Team meeting"}
    assert delete["approval"]["status"] == "approved"
    assert page["items"][-1]["id"] == done["message_id"]
    assert page["items"][-1]["content"] == done["response"]
    assert call_in(page, pending["id"])["approval"]["status"] == "approved"
    assert (detail["awaiting_approval"], detail["pending_approvals"]) == (False, [])
    assert again.status_code == 200
    assert again.content == approved.content, "the same decision again gets the same reply, byte for byte"
    assert changed.status_code == 409
    assert "already approved" in changed.json()["detail"]
    async with pg_engine.connect() as connection:
        stored_results = await connection.scalar(
            select(func.count()).select_from(messages).where(messages.c.tool_call_id == pending["id"])
        )
    assert stored_results == 1, "the call ran once and has one result"


async def test_a_denied_delete_keeps_the_task_and_the_reply_says_it_was_kept(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client(**APPROVALS) as client:
        conversation_id, asked = await ask_to_delete_the_meeting(client, user)
        [pending] = asked["pending_approvals"]
        denial = {"tool_call_id": pending["id"], "approved": False, "reason": "I still need it"}
        done = ok(await decide(client, user, conversation_id, denial))
        page = ok(await client.get(f"/api/{user}/conversations/{conversation_id}/messages", headers=auth(user)))

    task_id = pending["arguments"]["task_id"]
    assert done["status"] == "complete"
    assert (
        done["response"]
        == f"OK, I've kept 'Team meeting' (task {task_id}): it was not deleted (you said: I still need it)."
    )
    assert await titles(pg_engine, user) == ["Team meeting"]
    denied = done["tool_calls"][1]
    assert denied["error"] == "denied by the user: I still need it"
    assert (denied["approval"]["status"], denied["approval"]["reason"]) == ("denied", "I still need it")
    shown = call_in(page, pending["id"])
    assert (shown["error"], shown["approval"]["status"]) == ("denied by the user: I still need it", "denied")


async def test_streamed_turns_send_approval_requests_and_a_streamed_decision_streams_the_turn_going_on(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client(**APPROVALS) as client:
        conversation_id = (await chat(client, user, "Add a task called Team meeting"))["conversation_id"]
        asked = await client.post(
            f"/api/{user}/chat",
            json={"message": "Delete the meeting task", "conversation_id": conversation_id},
            headers={**auth(user), "Accept": "text/event-stream"},
        )
        first = events_of(asked.text)
        [(_, request)] = [e for e in first if e[0] == "approval_request"]
        decided = await decide(
            client,
            user,
            conversation_id,
            {"tool_call_id": request["id"], "approved": True},
            Accept="text/event-stream",
        )
        second = events_of(decided.text)

    assert [kind for kind, _ in first if kind != "delta"] == [
        "turn",
        "tool_call",
        "tool_result",
        "approval_request",
        "done",
    ]
    assert request["name"] == "delete_task"
    assert set(request) == {"id", "name", "arguments"}
    done = first[-1][1]
    assert (done["status"], done["pending_approvals"], done["interrupted"]) == ("awaiting_approval", [request], False)
    assert decided.headers["content-type"].startswith("text/event-stream")
    kinds = [kind for kind, _ in second if kind != "delta"]
    assert kinds == ["turn", "tool_call", "tool_result", "done"]
    assert second[0][1]["conversation_id"] == conversation_id
    assert second[2][1]["result"]["status"] == "deleted"
    expected = f"I've deleted 'Team meeting' (task {request['arguments']['task_id']})."
    assert (second[-1][1]["status"], second[-1][1]["response"]) == ("complete", expected)
    assert await titles(pg_engine, user) == []


async def test_a_new_message_denies_the_pending_call_as_superseded_and_its_own_turn_runs(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client(**APPROVALS) as client:
        conversation_id, asked = await ask_to_delete_the_meeting(client, user)
        [pending] = asked["pending_approvals"]
        listed = await chat(client, user, "Show me all my tasks", conversation_id)
        late = await decide(client, user, conversation_id, {"tool_call_id": pending["id"], "approved": True})
        page = ok(await client.get(f"/api/{user}/conversations/{conversation_id}/messages", headers=auth(user)))

    assert listed["status"] == "complete"
    assert [c["name"] for c in listed["tool_calls"]] == ["list_tasks"]
    assert await titles(pg_engine, user) == ["Team meeting"]
    assert late.status_code == 409
    assert "superseded by a new message" in late.json()["detail"]
    superseded = call_in(page, pending["id"])
    assert superseded["error"] == "denied by the user: superseded by a new message"
    assert superseded["approval"]["reason"] == "superseded by a new message"


async def test_a_call_pending_past_the_ttl_is_denied_as_expired_when_the_conversation_is_next_touched(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client(**APPROVALS, approval_ttl_seconds=0.5) as client:
        conversation_id, asked = await ask_to_delete_the_meeting(client, user)
        [pending] = asked["pending_approvals"]
        await asyncio.sleep(0.6)
        late = await decide(client, user, conversation_id, {"tool_call_id": pending["id"], "approved": True})
        detail = ok(await client.get(f"/api/{user}/conversations/{conversation_id}", headers=auth(user)))

    assert late.status_code == 409
    assert late.json()["detail"] == f"Tool call {pending['id']} was already denied (expired)"
    assert (detail["awaiting_approval"], detail["pending_approvals"]) == (False, [])
    assert await titles(pg_engine, user) == ["Team meeting"]


# --- refusals -----------------------------------------------------------------------------------------------------


async def test_another_users_call_or_conversation_unknown_calls_and_bad_bodies_are_refused(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    alice, bob = new_user(), new_user()
    async with app_client(**APPROVALS) as client:
        conversation_id, asked = await ask_to_delete_the_meeting(client, alice)
        call = asked["pending_approvals"][0]["id"]
        bobs_conversation = (await chat(client, bob, "hello"))["conversation_id"]
        approve = {"tool_call_id": call, "approved": True}
        foreign = [
            await decide(client, bob, conversation_id, approve),  # Bob's path and token, Alice's conversation
            await decide(client, bob, bobs_conversation, approve),  # Alice's call named in Bob's conversation
            await client.post(  # Bob's token on Alice's path
                f"/api/{alice}/conversations/{conversation_id}/approvals",
                json={"decisions": [approve]},
                headers=auth(bob),
            ),
            await decide(client, alice, conversation_id, {"tool_call_id": "call_unknown", "approved": True}),
            await decide(client, alice, str(uuid.uuid4()), approve),
        ]
        url = f"/api/{alice}/conversations/{conversation_id}/approvals"
        bad = [
            await client.post(url, json={"decisions": []}, headers=auth(alice)),
            await client.post(url, json={}, headers=auth(alice)),
            await client.post(url, json={"decisions": [{"tool_call_id": call}]}, headers=auth(alice)),
            await client.post(
                url, json={"decisions": [{"tool_call_id": call, "approved": "yes"}]}, headers=auth(alice)
            ),
            await client.post(url, json={"decisions": [approve, approve]}, headers=auth(alice)),
            await client.post(url, json={"decisions": [{**approve, "reason": "x" * 2001}]}, headers=auth(alice)),
            await client.post(url, content=b"{not json", headers={**auth(alice), "Content-Type": "application/json"}),
            await client.post(url, json={"decisions": [{"tool_call_id": "", "approved": True}]}, headers=auth(alice)),
        ]
        still = ok(await client.get(f"/api/{alice}/conversations/{conversation_id}", headers=auth(alice)))

    assert [r.status_code for r in foreign] == [404, 404, 403, 404, 404]
    assert all("not found" in r.json()["detail"].lower() for r in foreign if r.status_code == 404)
    assert [r.status_code for r in bad] == [400] * len(bad), [r.text for r in bad]
    assert still["awaiting_approval"] is True, "nothing refused changed anything"
    assert await titles(pg_engine, alice) == ["Team meeting"]


async def test_clients_of_the_old_contract_see_no_change_without_approval_tools(
    app_client: AppClient, pg_engine: AsyncEngine
) -> None:
    user = new_user()
    async with app_client() as client:
        _, done = await ask_to_delete_the_meeting(client, user)
    assert done["status"] == "complete"
    assert done["pending_approvals"] == []
    assert [c["name"] for c in done["tool_calls"]] == ["list_tasks", "delete_task"]
    assert all("approval" not in c and "status" not in c for c in done["tool_calls"])
    assert await titles(pg_engine, user) == []


# --- the provider wire formats ------------------------------------------------------------------------------------


def provider_settings(llm: Provider, fake: FakeProviderServer) -> dict[str, Any]:
    keys = {"openai": "sk-test-approvals-0123456789", "anthropic": "sk-ant-test-approvals-0123456789"}
    base = {"openai": f"{fake.url}/v1", "anthropic": fake.url}
    return {
        "llm": llm,
        f"{llm}_base_url": base[llm],
        f"{llm}_api_key": keys[llm],
        "llm_max_retries": 0,
        **APPROVALS,
    }


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
@pytest.mark.parametrize("approved", [True, False])
async def test_the_turn_going_on_sends_the_decided_result_in_the_providers_format(
    app_client: AppClient, pg_engine: AsyncEngine, fake: FakeProviderServer, llm: Provider, approved: bool
) -> None:
    user = new_user()
    async with app_client(**provider_settings(llm, fake)) as client:
        added = await chat(client, user, "Add a task to buy milk")
        task_id = added["tool_calls"][0]["result"]["task_id"]
        asked = await chat(client, user, f"Delete task {task_id}", added["conversation_id"])
        [pending] = asked["pending_approvals"]
        calls_before = len(fake.bodies(llm))
        decision: dict[str, Any] = {"tool_call_id": pending["id"], "approved": approved}
        if not approved:
            decision["reason"] = "not now"
        done = ok(await decide(client, user, added["conversation_id"], decision))

    assert (pending["name"], pending["arguments"]) == ("delete_task", {"task_id": task_id})
    [going_on] = fake.bodies(llm)[calls_before:]
    if approved:
        content = json.dumps({"task_id": task_id, "status": "deleted", "title": "Buy milk"})
        assert await titles(pg_engine, user) == []
    else:
        content = json.dumps({"error": "denied by the user: not now"})
        assert await titles(pg_engine, user) == ["Buy milk"]
    if llm == "openai":
        assert pending["id"].startswith("call_")
        asking, answer = going_on["messages"][-2:]
        assert asking["role"] == "assistant"
        assert [c["id"] for c in asking["tool_calls"]] == [pending["id"]]
        assert answer == {"role": "tool", "tool_call_id": pending["id"], "content": content}
    else:
        assert pending["id"].startswith("toolu_")
        asking, answer = going_on["messages"][-2:]
        assert [b["id"] for b in asking["content"] if b["type"] == "tool_use"] == [pending["id"]]
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": pending["id"], "content": content}
        if not approved:
            result["is_error"] = True
        assert answer == {"role": "user", "content": [result]}
    assert done["response"] == (
        f"Done. delete_task returned {content}" if approved else f"Done. delete_task failed: {content}"
    )
    assert done["status"] == "complete"
