"""Request and response bodies of the HTTP API, with the examples shown in the OpenAPI schema."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from chatcore.model import MAX_MESSAGE_LENGTH, ChatReply


class ChatRequest(msgspec.Struct, kw_only=True):
    message: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_MESSAGE_LENGTH,
            description="The user's message.",
            examples=["Add a task to buy milk"],
        ),
    ]
    conversation_id: Annotated[
        uuid.UUID | None,
        msgspec.Meta(description="Continue this conversation; omit to start a new one."),
    ] = None


class ToolCallOut(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    arguments: dict[str, Any]
    result: Any
    error: str | None = None


class ChatResponse(msgspec.Struct):
    conversation_id: uuid.UUID
    message_id: Annotated[uuid.UUID, msgspec.Meta(description="The final assistant message.")]
    response: str
    tool_calls: list[ToolCallOut]

    @classmethod
    def from_reply(cls, reply: ChatReply) -> ChatResponse:
        return cls(
            conversation_id=reply.conversation_id,
            message_id=reply.message_id,
            response=reply.response,
            tool_calls=[
                ToolCallOut(id=c.id, name=c.name, arguments=dict(c.arguments), result=c.result, error=c.error)
                for c in reply.tool_calls
            ],
        )


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


class HealthBody(msgspec.Struct):
    status: str


CHAT_REQUEST_EXAMPLE = {"message": "Add a task to buy milk", "conversation_id": "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11"}
CHAT_RESPONSE_EXAMPLE = {
    "conversation_id": "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11",
    "message_id": "0f6e3a1b-5c2d-4e8f-9a7b-3c1d2e4f5a6b",
    "response": "I've added 'Buy milk' to your tasks (task 1).",
    "tool_calls": [
        {
            "id": "call_1",
            "name": "add_task",
            "arguments": {"title": "Buy milk"},
            "result": {"task_id": 1, "status": "created", "title": "Buy milk"},
        }
    ],
}


def error_spec(description: str, detail: str, status: int) -> ResponseSpec:
    """An OpenAPI response of the one error body every endpoint uses, with an example."""
    return ResponseSpec(
        data_container=ErrorBody,
        description=description,
        examples=[Example(summary=description, value={"status_code": status, "detail": detail})],
    )
