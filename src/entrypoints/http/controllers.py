"""HTTP controllers. No try/except here: errors reach the client through ``errors.EXCEPTION_HANDLERS``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter
from litestar.response import Response

from chatcore.entrypoints.http.auth import BEARER_SECURITY, authorize_path_user
from chatcore.entrypoints.http.conversations import accepts_event_stream, stream_decisions, stream_turn
from chatcore.entrypoints.http.dto import (
    APPROVALS_REQUEST_EXAMPLE,
    APPROVED_RESPONSE_EXAMPLE,
    AWAITING_RESPONSE_EXAMPLE,
    CHAT_REQUEST_EXAMPLE,
    CHAT_RESPONSE_EXAMPLE,
    DENIAL_REQUEST_EXAMPLE,
    ApprovalsRequest,
    ChatRequest,
    ChatResponse,
    HealthBody,
)
from chatcore.entrypoints.http.dto import error_spec as _error
from chatcore.ports import ConversationStore
from chatcore.service import ChatService
from chatcore.streamed_turns import TurnStreamer

CHAT_ERRORS = {
    400: _error("Bad request body", "message must not be empty", 400),
    401: _error("Missing, malformed, badly signed or expired token", "Missing or invalid bearer token", 401),
    403: _error("The path user is not the token's subject", "Access denied", 403),
    404: _error("Unknown conversation, or another user's", "Conversation not found", 404),
    409: _error(
        "Another turn holds the conversation (at once with `if_busy: reject`, else after the wait), or the "
        "Idempotency-Key's first request still runs; Retry-After says when to try again",
        "Another turn is in progress on this conversation",
        409,
    ),
    413: _error("The request body is over CHATCORE_MAX_BODY_BYTES", "Request body is too large", 413),
    422: _error(
        "The Idempotency-Key was used with a different request, or the conversation is too long for the model",
        "This Idempotency-Key was used with a different request",
        422,
    ),
    429: _error(
        "Over the user's CHATCORE_RATE_LIMIT; Retry-After says when to try again",
        "Too many requests: the limit is 30 per minute; retry in 42 seconds",
        429,
    ),
    502: _error("The model provider failed", "The model provider is unavailable", 502),
    503: _error("Database, auth server or provider unavailable", "The database is unavailable", 503),
    504: _error("The model provider timed out", "The model provider timed out", 504),
}

IDEMPOTENCY_KEY_DESCRIPTION = (
    "Any unique string (1-255 printable ASCII characters, e.g. a UUID) naming this request. A retry with the same "
    "key and body returns the stored reply (same ids) without running the model or its tools again; while the "
    "first request still runs, a retry waits for it (or gets 409). A streamed retry (`Accept: text/event-stream`) "
    "follows the first request's turn instead, from its start or after `Last-Event-ID`, and replays its events once "
    "it finished; a JSON first request's reply comes as events, a streamed one's as the JSON reply. The same key "
    "with another body is 422. Keys are per user and kept for CHATCORE_IDEMPOTENCY_TTL seconds (24 h by default)."
)
LAST_EVENT_ID_DESCRIPTION = (
    "With `Idempotency-Key` on a streamed request: the last event id the client saw of the first request's "
    "stream; the repeat sends the events after it."
)


class ChatController(Controller):
    path = "/api/{user_id:str}"
    security = [{BEARER_SECURITY: []}]
    tags = ["chat"]

    @post(
        "/chat",
        summary="Send a message and get the assistant's reply",
        description=(
            "Runs one chat turn: loads the conversation from the database (or starts one), stores the message, "
            "runs the assistant with its tools, stores every message and returns the reply with the tool calls made."
            "\n\nWith `Accept: text/event-stream` the reply streams as Server-Sent Events instead: `turn` "
            "(conversation_id, turn_id), `delta` (text), `tool_call`, `tool_result`, then `done` (message_id, "
            "response, tool_calls, interrupted) or `error` (the status_code and detail this endpoint would answer). "
            "A tool call that needs the user's approval is not run: it comes as an `approval_request` event (id, name, "
            "arguments) and the turn ends with `status: awaiting_approval` and its `pending_approvals`; decide them at "
            "POST `/api/{user_id}/conversations/{conversation_id}/approvals`. "
            "Every event has an `id`; after a dropped connection, GET "
            "`/api/{user_id}/conversations/{conversation_id}/turns/{turn_id}/events` with `Last-Event-ID` gets the "
            "rest. The turn completes and is stored even if the client disconnects."
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
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(name="Idempotency-Key", required=False, description=IDEMPOTENCY_KEY_DESCRIPTION),
        ] = None,
        last_event_id: Annotated[
            int | None,
            HeaderParameter(name="Last-Event-ID", ge=0, required=False, description=LAST_EVENT_ID_DESCRIPTION),
        ] = None,
    ) -> Response[Any]:
        principal = await authorize_path_user(request)  # not a guard: see authorize_path_user
        if_busy = data.busy_policy()
        if accepts_event_stream(request):
            return await stream_turn(
                request,
                data.message,
                data.conversation_id,
                idempotency_key=idempotency_key,
                after=last_event_id,
                if_busy=if_busy,
            )
        service: ChatService = request.app.state.service
        streamer: TurnStreamer = request.app.state.streamer
        reply = await service.send(
            principal,
            data.message,
            data.conversation_id,
            idempotency_key=idempotency_key,
            if_busy=if_busy,
            interrupt=streamer.stop,
        )
        return Response(ChatResponse.from_reply(reply))

    @post(
        "/conversations/{conversation_id:uuid}/approvals",
        summary="Approve or deny tool calls that wait for the user",
        description=(
            "Decides tool calls of the conversation's last turn that wait for the user's approval (`status: "
            "awaiting_approval`, `pending_approvals` in the chat reply). An approved call runs with the arguments "
            "the model gave (stored on the server; never taken from this request); a denied one gets the error "
            "result `denied by the user` and the reason. Decisions on only some pending calls are stored and the "
            "reply still says `awaiting_approval`; once none is left pending, the model continues the same turn "
            "and the reply has the chat reply's shape (`message_id` is the new final assistant message)."
            "\n\nThe same decisions sent twice (a retry, or two replicas at once) run each approved call once, and "
            "both get the same reply. A different decision for a call already decided is 409; a call that is not "
            "pending in this conversation (or another user's) is 404. A new chat message denies pending calls "
            "(`superseded by a new message`); calls pending longer than CHATCORE_APPROVAL_TTL are denied "
            "(`expired`). With `Accept: text/event-stream` the continuation streams like a chat turn."
        ),
        status_code=200,
        responses={
            200: ResponseSpec(
                data_container=ChatResponse,
                description="The turn's reply after the decisions",
                examples=[
                    Example(summary="Approved: the turn went on", value=APPROVED_RESPONSE_EXAMPLE),
                    Example(summary="Some calls still wait", value=AWAITING_RESPONSE_EXAMPLE),
                ],
            ),
            **CHAT_ERRORS,
            400: _error("Bad request body", "decisions must hold 1 to 100 decisions", 400),
            404: _error(
                "Unknown conversation or tool call, or another user's",
                "Tool call not found, or it does not await approval in this conversation",
                404,
            ),
            409: _error(
                "The call was already decided otherwise (or denied as expired or superseded), or the conversation "
                "stayed busy; Retry-After says when to try again when busy",
                "Tool call call_2 was already denied (expired)",
                409,
            ),
        },
    )
    async def approvals(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[uuid.UUID],
        data: Annotated[
            ApprovalsRequest,
            Body(
                examples=[
                    Example(summary="Approve a call", value=APPROVALS_REQUEST_EXAMPLE),
                    Example(summary="Deny a call, with a reason", value=DENIAL_REQUEST_EXAMPLE),
                ]
            ),
        ],
    ) -> Response[Any]:
        principal = await authorize_path_user(request)
        decisions = [decision.to_decision() for decision in data.decisions]
        if accepts_event_stream(request):
            return await stream_decisions(request, conversation_id, decisions)
        service: ChatService = request.app.state.service
        reply = await service.decide(principal, conversation_id, decisions)
        return Response(ChatResponse.from_reply(reply))


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
