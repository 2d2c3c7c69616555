"""HTTP controllers. No try/except here: errors reach the client through ``errors.EXCEPTION_HANDLERS``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Response

from chatcore.entrypoints.http.auth import principal_of, require_path_user
from chatcore.entrypoints.http.dto import (
    CHAT_REQUEST_EXAMPLE,
    CHAT_RESPONSE_EXAMPLE,
    ChatRequest,
    ChatResponse,
    ErrorBody,
    HealthBody,
)
from chatcore.ports import ConversationStore
from chatcore.service import ChatService


def _error(description: str, detail: str, status: int) -> ResponseSpec:
    return ResponseSpec(
        data_container=ErrorBody,
        description=description,
        examples=[Example(summary=description, value={"status_code": status, "detail": detail})],
    )


CHAT_ERRORS = {
    400: _error("Bad request body", "message must not be empty", 400),
    401: _error("Missing, malformed, badly signed or expired token", "Missing or invalid bearer token", 401),
    403: _error("The path user is not the token's subject", "Access denied", 403),
    404: _error("Unknown conversation, or another user's", "Conversation not found", 404),
    502: _error("The model provider failed", "The model provider is unavailable", 502),
    503: _error("Database, auth server or provider unavailable", "The database is unavailable", 503),
    504: _error("The model provider timed out", "The model provider timed out", 504),
}


class ChatController(Controller):
    path = "/api/{user_id:str}"
    guards = [require_path_user]
    tags = ["chat"]

    @post(
        "/chat",
        summary="Send a message and get the assistant's reply",
        description=(
            "Runs one chat turn: loads the conversation from the database (or starts one), stores the message, "
            "runs the assistant with its tools, stores every message and returns the reply with the tool calls made."
        ),
        status_code=200,
        responses={
            200: ResponseSpec(
                data_container=ChatResponse,
                description="The assistant's reply",
                examples=[Example(summary="A turn with a tool call", value=CHAT_RESPONSE_EXAMPLE)],
            ),
            **CHAT_ERRORS,
        },
    )
    async def chat(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[
            ChatRequest,
            Body(examples=[Example(summary="Continue a conversation", value=CHAT_REQUEST_EXAMPLE)]),
        ],
    ) -> ChatResponse:
        service: ChatService = request.app.state.service
        reply = await service.send(principal_of(request), data.message, data.conversation_id)
        return ChatResponse.from_reply(reply)


class HealthController(Controller):
    path = "/"
    tags = ["health"]

    @get("/health", summary="The process is alive")
    async def health(self) -> HealthBody:
        return HealthBody(status="ok")

    @get(
        "/ready",
        summary="The database is reachable",
        responses={503: _error("Not ready", "The database is unavailable", 503)},
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[HealthBody]:
        store: ConversationStore = request.app.state.service.store
        await store.ping()
        return Response(HealthBody(status="ready"))
