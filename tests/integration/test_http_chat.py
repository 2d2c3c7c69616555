"""POST /api/{user_id}/chat over HTTP on PostgreSQL: the contract's statuses, statelessness, the offline agent."""

from __future__ import annotations

import uuid

import jwt
import pytest

from chatcore.errors import AgentTimeout, AgentUnavailable
from chatcore.fakes import ScriptedAgent
from chatcore.model import AgentResponse

from .conftest import SECRET, AppClient, auth

pytestmark = pytest.mark.integration


async def test_chat_adds_and_lists_tasks_with_the_offline_agent(app_client: AppClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with app_client() as client:
        first = await client.post(f"/api/{user}/chat", json={"message": "Add a task to buy milk"}, headers=auth(user))
        assert first.status_code == 200, first.text
        body = first.json()
        uuid.UUID(body["conversation_id"])
        uuid.UUID(body["message_id"])
        assert [c["name"] for c in body["tool_calls"]] == ["add_task"]
        call = body["tool_calls"][0]
        assert call["arguments"] == {"title": "Buy milk"}
        assert call["result"]["status"] == "created"
        assert call["result"]["title"] == "Buy milk"
        assert isinstance(call["result"]["task_id"], int)
        assert "Buy milk" in body["response"]
        assert first.headers["x-request-id"]

        listed = await client.post(
            f"/api/{user}/chat",
            json={"message": "Show me all my tasks", "conversation_id": body["conversation_id"]},
            headers=auth(user),
        )
        assert listed.status_code == 200, listed.text
        listing = listed.json()
        assert listing["conversation_id"] == body["conversation_id"]
        assert listing["tool_calls"][0]["name"] == "list_tasks"
        assert [t["title"] for t in listing["tool_calls"][0]["result"]] == ["Buy milk"]


async def test_the_offline_agent_phrases_manage_real_tasks(app_client: AppClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    conversation: str | None = None

    async with app_client() as client:

        async def say(message: str) -> dict[str, object]:
            nonlocal conversation
            payload: dict[str, object] = {"message": message}
            if conversation:
                payload["conversation_id"] = conversation
            response = await client.post(f"/api/{user}/chat", json=payload, headers=auth(user))
            assert response.status_code == 200, response.text
            body: dict[str, object] = response.json()
            conversation = str(body["conversation_id"])
            return body

        def results(body: dict[str, object]) -> list[tuple[str, object]]:
            calls = body["tool_calls"]
            assert isinstance(calls, list)
            return [(c["name"], c.get("result")) for c in calls]

        groceries = results(await say("Add a task to buy groceries"))
        assert groceries[0][0] == "add_task"
        groceries_id = groceries[0][1]["task_id"]  # type: ignore[index]
        bills = results(await say("I need to remember to pay bills"))
        assert bills[0][1]["title"] == "Pay bills"  # type: ignore[index]
        meeting = results(await say("Add a task to prepare the team meeting"))
        meeting_id = meeting[0][1]["task_id"]  # type: ignore[index]

        everything = results(await say("Show me all my tasks"))
        assert len(everything[0][1]) == 3  # type: ignore[arg-type]

        done = results(await say(f"Mark task {groceries_id} as complete"))
        assert done == [("complete_task", {"task_id": groceries_id, "status": "completed", "title": "Buy groceries"})]

        pending = results(await say("What's pending?"))
        assert {t["title"] for t in pending[0][1]} == {"Pay bills", "Prepare the team meeting"}  # type: ignore[union-attr]
        completed = results(await say("What have I completed?"))
        assert [t["title"] for t in completed[0][1]] == ["Buy groceries"]  # type: ignore[union-attr]

        renamed = results(await say(f"Change task {groceries_id} to 'Call mom tonight'"))
        assert renamed[0][0] == "update_task"
        assert renamed[0][1]["title"] == "Call mom tonight"  # type: ignore[index]

        by_title = results(await say("Delete the meeting task"))
        assert [name for name, _ in by_title] == ["list_tasks", "delete_task"]
        assert by_title[1][1]["task_id"] == meeting_id  # type: ignore[index]

        deleted = results(await say(f"Delete task {groceries_id}"))
        assert deleted[0][1]["status"] == "deleted"  # type: ignore[index]

        final = results(await say("Show me all my tasks"))
        assert [t["title"] for t in final[0][1]] == ["Pay bills"]  # type: ignore[union-attr]


async def test_a_conversation_continues_on_a_second_app_instance(app_client: AppClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with app_client() as first_instance:
        started = await first_instance.post(
            f"/api/{user}/chat", json={"message": "Add a task to water the plants"}, headers=auth(user)
        )
        assert started.status_code == 200
    conversation_id = started.json()["conversation_id"]
    seen: list[int] = []

    def remember(request: object) -> AgentResponse:
        messages = getattr(request, "messages", ())
        seen.append(len(messages))
        return AgentResponse("Still here.")

    from chatcore.fakes import FunctionAgent

    async with app_client(agent=FunctionAgent(remember)) as second_instance:
        continued = await second_instance.post(
            f"/api/{user}/chat",
            json={"message": "Are you there?", "conversation_id": conversation_id},
            headers=auth(user),
        )
    assert continued.status_code == 200
    assert continued.json()["conversation_id"] == conversation_id
    # user, assistant(tool call), tool, assistant from the first instance + the new user message.
    assert seen == [5]


async def test_authentication_is_decided_before_the_body(app_client: AppClient) -> None:
    async with app_client() as client:
        missing = await client.post("/api/alice/chat", content=b"{not json")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["detail"]

        basic = await client.post("/api/alice/chat", json={"message": "hi"}, headers={"Authorization": "Basic abc"})
        assert basic.status_code == 401

        forged = await client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert forged.status_code == 401

        wrong_key = jwt.encode({"sub": "alice", "exp": 9999999999}, "another-secret-0123456789abcdef-xyz", "HS256")
        signed_elsewhere = await client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {wrong_key}"}
        )
        assert signed_elsewhere.status_code == 401

        expired = await client.post(
            "/api/alice/chat",
            json={"message": "hi"},
            headers={"Authorization": f"Bearer {jwt.encode({'sub': 'alice', 'exp': 1_000_000}, SECRET, 'HS256')}"},
        )
        assert expired.status_code == 401

        no_exp = jwt.encode({"sub": "alice"}, SECRET, "HS256")
        unbounded = await client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {no_exp}"}
        )
        assert unbounded.status_code == 401


async def test_path_user_must_be_the_token_subject(app_client: AppClient) -> None:
    async with app_client() as client:
        response = await client.post("/api/bob/chat", json={"message": "hi"}, headers=auth("alice"))
        assert response.status_code == 403
        assert response.json()["detail"]


async def test_unknown_and_foreign_conversations_are_the_same_404(app_client: AppClient) -> None:
    async with app_client() as client:
        owned = await client.post("/api/alice/chat", json={"message": "Add a task to read"}, headers=auth("alice"))
        alice_conversation = owned.json()["conversation_id"]
        foreign = await client.post(
            "/api/mallory/chat",
            json={"message": "hi", "conversation_id": alice_conversation},
            headers=auth("mallory"),
        )
        unknown = await client.post(
            "/api/mallory/chat",
            json={"message": "hi", "conversation_id": str(uuid.uuid4())},
            headers=auth("mallory"),
        )
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json()["detail"] == unknown.json()["detail"]


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        (None, b"{not json"),
        ({}, None),
        ({"message": ""}, None),
        ({"message": "   \n "}, None),
        ({"message": "x" * 32_001}, None),
        ({"message": "a\u0000b"}, None),
        ({"message": "hi", "conversation_id": "not-a-uuid"}, None),
        ({"message": 42}, None),
        ([1, 2], None),
    ],
)
async def test_bad_bodies_are_400_with_a_detail(app_client: AppClient, body: object, raw: bytes | None) -> None:
    async with app_client() as client:
        headers = {**auth("alice"), "Content-Type": "application/json"}
        if raw is not None:
            response = await client.post("/api/alice/chat", content=raw, headers=headers)
        else:
            response = await client.post("/api/alice/chat", json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["detail"]


async def test_model_failures_map_to_502_and_504_and_keep_the_user_message(app_client: AppClient) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    agent = ScriptedAgent([AgentResponse("hello"), AgentUnavailable("OpenAI request failed"), AgentTimeout()])
    async with app_client(agent=agent) as client:
        ok = await client.post(f"/api/{user}/chat", json={"message": "hi"}, headers=auth(user))
        conversation_id = ok.json()["conversation_id"]
        failed = await client.post(
            f"/api/{user}/chat", json={"message": "again", "conversation_id": conversation_id}, headers=auth(user)
        )
        assert failed.status_code == 502
        assert failed.json()["conversation_id"] == conversation_id
        assert "OpenAI" in failed.json()["detail"]
        timed_out = await client.post(
            f"/api/{user}/chat", json={"message": "and again", "conversation_id": conversation_id}, headers=auth(user)
        )
        assert timed_out.status_code == 504
    async with app_client(agent=ScriptedAgent([AgentResponse("back")])) as client:
        recovered = await client.post(
            f"/api/{user}/chat",
            json={"message": "still there?", "conversation_id": conversation_id},
            headers=auth(user),
        )
        assert recovered.status_code == 200


async def test_an_unexpected_error_is_a_sanitised_500_with_a_request_id(app_client: AppClient) -> None:
    from chatcore.fakes import FunctionAgent

    def explode(request: object) -> AgentResponse:
        raise RuntimeError("secret internal state: password=hunter2")

    async with app_client(agent=FunctionAgent(explode)) as client:
        response = await client.post("/api/alice/chat", json={"message": "hi"}, headers=auth("alice"))
    assert response.status_code == 500
    assert response.json()["detail"] == "Internal server error"
    assert "hunter2" not in response.text
    assert response.headers["x-request-id"]


async def test_health_ready_and_openapi(app_client: AppClient) -> None:
    async with app_client() as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200
        schema = (await client.get("/schema/openapi.json")).json()
        operation = schema["paths"]["/api/{user_id}/chat"]["post"]
        assert {"200", "400", "401", "403", "404", "502", "504"} <= set(operation["responses"])
        request_body = operation["requestBody"]["content"]["application/json"]
        assert request_body.get("examples") or request_body["schema"]["examples"]
        assert operation["responses"]["200"]["content"]["application/json"]["examples"]


async def test_ready_is_503_when_the_database_is_unreachable() -> None:
    from litestar.testing import AsyncTestClient

    from chatcore.entrypoints.container import build_container
    from chatcore.entrypoints.http.app import create_app
    from chatcore.entrypoints.settings import Settings

    settings = Settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere", auth_secret=SECRET)
    async with AsyncTestClient(app=create_app(build_container(settings))) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["detail"]
        chat = await client.post("/api/alice/chat", json={"message": "hi"}, headers=auth("alice"))
        assert chat.status_code == 503
        assert "127.0.0.1" not in chat.text
