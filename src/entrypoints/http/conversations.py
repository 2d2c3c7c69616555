"""Streaming replies over Server-Sent Events, the conversation history API, and the task list, over HTTP.

Same rules as the chat endpoint: the ``require_path_user`` guard, another user's conversation
or turn is 404, and errors go through ``errors.EXCEPTION_HANDLERS``. The one exception is a
failure after a stream has started: the status is already sent, so it becomes the stream's
``error`` event, with the status and detail the JSON endpoint would have answered.
"""

from __future__ import annotations

import inspect
import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, Parameter
from litestar.response import Stream

from chatcore.adapters.todo.model import TaskFilter
from chatcore.adapters.todo.ports import TaskStore
from chatcore.conversations import ConversationHistory
from chatcore.entrypoints.http.auth import BEARER_SECURITY, principal_of, require_path_user
from chatcore.entrypoints.http.conversation_dto import (
    CONVERSATION_EXAMPLE,
    CONVERSATION_PAGE_EXAMPLE,
    MESSAGE_PAGE_EXAMPLE,
    SSE_EXAMPLE,
    TASKS_EXAMPLE,
    ConversationDetail,
    ConversationOut,
    ConversationPage,
    MessagePage,
    RenameRequest,
    StopResponse,
    TaskOut,
)
from chatcore.entrypoints.http.dto import error_spec as _error
from chatcore.entrypoints.http.errors import event_error_body
from chatcore.model import BusyPolicy, Principal, ToolDecision, TurnEvent
from chatcore.ports import TurnEventStore
from chatcore.service import ChatService
from chatcore.streamed_turns import TurnStreamer

EVENT_STREAM = "text/event-stream"
DEMO_TOKEN_ENV = "CHATCORE_DEMO_TOKEN"
"""Where ``chatcore serve --dev`` leaves the demo user's token for the workers (see cli.py)."""


AUTH_ERRORS = {
    401: _error("Missing, malformed, badly signed or expired token", "Missing or invalid bearer token", 401),
    403: _error("The path user is not the token's subject", "Access denied", 403),
    503: _error("Database or auth server unavailable", "The database is unavailable", 503),
}
NOT_FOUND = {404: _error("Unknown conversation, or another user's", "Conversation not found", 404)}
BAD_CURSOR = {400: _error("A cursor that this API did not hand out", "cursor is not valid", 400)}


def accepts_event_stream(request: Request[Any, Any, Any]) -> bool:
    """Whether the client asked for Server-Sent Events rather than one JSON reply."""
    return EVENT_STREAM in request.headers.get("accept", "").lower()


SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
"""What Litestar's ``ServerSentEvent`` sends beside the media type (nothing buffers or caches the stream)."""


def sse_message(event: TurnEvent) -> bytes:
    """One event as Server-Sent Events lines, byte for byte what Litestar's ``ServerSentEventMessage`` writes: event
    types have no line breaks, and compact JSON has none either."""
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.seq}\r\nevent: {event.type}\r\ndata: {data}\r\n\r\n".encode()


def event_stream(events: AsyncIterator[TurnEvent]) -> Stream:
    """Turn events as SSE: ``id`` is the event's number in its turn (send it back as Last-Event-ID to resume).

    A plain ``Stream`` of ready bytes rather than Litestar's ``ServerSentEvent``, which starts every response with
    a hop to a worker thread (its ``sync_to_thread`` over an empty iterator) and builds each event through a
    ``StringIO`` and regular expressions.
    """

    async def messages() -> AsyncIterator[bytes]:
        async for event in events:
            yield sse_message(event)

    return Stream(messages(), media_type=EVENT_STREAM, headers=SSE_HEADERS)


async def stream_turn(
    request: Request[Any, Any, Any],
    message: str,
    conversation_id: uuid.UUID | None,
    *,
    idempotency_key: str | None = None,
    after: int | None = None,
    if_busy: BusyPolicy | None = None,
) -> Stream:
    """POST /chat with ``Accept: text/event-stream``: the turn runs in the background; this response follows it.

    With an ``Idempotency-Key``, a repeat follows or replays the first request's turn, after ``after``
    (the request's ``Last-Event-ID``).
    """
    streamer: TurnStreamer = request.app.state.streamer
    events = await streamer.start(
        principal_of(request),
        message,
        conversation_id,
        idempotency_key=idempotency_key,
        after=after or 0,
        if_busy=if_busy,
    )
    return event_stream(events)


async def stream_decisions(
    request: Request[Any, Any, Any], conversation_id: uuid.UUID, decisions: Sequence[ToolDecision]
) -> Stream:
    """POST .../approvals with ``Accept: text/event-stream``: the decisions (and the turn going on) as events."""
    streamer: TurnStreamer = request.app.state.streamer
    return event_stream(await streamer.decide(principal_of(request), conversation_id, decisions))


async def attach_conversations(state: State, container: Any, service: ChatService, *, dev_mode: bool) -> None:
    """Put what these controllers need on the app state (called by the app's lifespan, after the resources start)."""
    events: TurnEventStore = await _resolved(container.turn_events())
    tasks: TaskStore = await _resolved(container.tasks())
    state.streamer = TurnStreamer(
        service,
        events,
        policy=container.stream_policy(),
        error_body=event_error_body,
        notifications=await _resolved(container.turn_notifications()),
    )
    state.history = await _resolved(container.history())
    state.tasks = tasks
    state.demo_token = os.environ.get(DEMO_TOKEN_ENV) if dev_mode else None


async def _resolved(provided: Any) -> Any:
    """A provider's value: dependency-injector hands back an awaitable when a dependency is an async resource."""
    return await provided if inspect.isawaitable(provided) else provided


async def detach_conversations(state: State) -> None:
    """Let streamed turns finish (they are stored) before the resources they use are shut down."""
    streamer: TurnStreamer | None = getattr(state, "streamer", None)
    if streamer is not None:
        await streamer.aclose()


def _history(request: Request[Any, Any, Any]) -> ConversationHistory:
    history: ConversationHistory = request.app.state.history
    return history


def _user(request: Request[Any, Any, Any]) -> Principal:
    return principal_of(request)


class ConversationsController(Controller):
    path = "/api/{user_id:str}"
    guards = [require_path_user]
    security = [{BEARER_SECURITY: []}]
    tags = ["conversations"]

    @get(
        "/conversations",
        summary="List the user's conversations, most recently active first",
        description="Keyset pagination: pass `next_cursor` back as `cursor` until it is null.",
        responses={
            200: ResponseSpec(
                data_container=ConversationPage,
                description="A page of conversations",
                examples=[Example(summary="One conversation and more to come", value=CONVERSATION_PAGE_EXAMPLE)],
            ),
            **BAD_CURSOR,
            **AUTH_ERRORS,
        },
    )
    async def list_conversations(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[int, Parameter(ge=1, le=100, description="Conversations per page.")] = 20,
        cursor: Annotated[str | None, Parameter(description="The previous page's next_cursor.")] = None,
    ) -> ConversationPage:
        page = await _history(request).conversations(_user(request).user_id, limit=limit, cursor=cursor)
        return ConversationPage.from_page(page)

    @get(
        "/conversations/{conversation_id:uuid}/messages",
        summary="A conversation's messages, oldest first",
        description=(
            "User and assistant messages; an assistant's tool calls come with their results. `limit` counts stored "
            "messages (tool results included), and a page never ends between a tool call and its result."
        ),
        responses={
            200: ResponseSpec(
                data_container=MessagePage,
                description="A page of messages",
                examples=[Example(summary="A turn with a tool call", value=MESSAGE_PAGE_EXAMPLE)],
            ),
            **BAD_CURSOR,
            **NOT_FOUND,
            **AUTH_ERRORS,
        },
    )
    async def list_messages(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[uuid.UUID],
        limit: Annotated[int, Parameter(ge=1, le=200, description="Stored messages per page.")] = 50,
        cursor: Annotated[str | None, Parameter(description="The previous page's next_cursor.")] = None,
    ) -> MessagePage:
        page = await _history(request).messages(_user(request).user_id, conversation_id, limit=limit, cursor=cursor)
        return MessagePage.from_page(page)

    @get(
        "/conversations/{conversation_id:uuid}",
        summary="One conversation, and whether tool calls of it wait for the user's approval",
        responses={
            200: ResponseSpec(
                data_container=ConversationDetail,
                description="The conversation",
                examples=[
                    Example(
                        summary="A delete waiting for approval",
                        value={
                            **CONVERSATION_EXAMPLE,
                            "awaiting_approval": True,
                            "pending_approvals": [{"id": "call_2", "name": "delete_task", "arguments": {"task_id": 3}}],
                        },
                    )
                ],
            ),
            **NOT_FOUND,
            **AUTH_ERRORS,
        },
    )
    async def get_conversation(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[uuid.UUID]
    ) -> ConversationDetail:
        user_id = _user(request).user_id
        service: ChatService = request.app.state.service
        await service.close_dead_turns(user_id, conversation_id)  # its state as it is: a dead turn is not running
        detail = await _history(request).conversation(user_id, conversation_id)
        return ConversationDetail.from_detail(detail)

    @patch(
        "/conversations/{conversation_id:uuid}",
        summary="Rename a conversation",
        responses={
            200: ResponseSpec(
                data_container=ConversationOut,
                description="The renamed conversation",
                examples=[Example(summary="Renamed", value={**CONVERSATION_EXAMPLE, "preview": None})],
            ),
            400: _error("Empty or too long title", "title must not be empty", 400),
            **NOT_FOUND,
            **AUTH_ERRORS,
        },
    )
    async def rename(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[uuid.UUID],
        data: Annotated[RenameRequest, Body(examples=[Example(summary="A new title", value={"title": "Groceries"})])],
    ) -> ConversationOut:
        renamed = await _history(request).rename(_user(request).user_id, conversation_id, data.title)
        return ConversationOut.from_conversation(renamed)

    @delete(
        "/conversations/{conversation_id:uuid}",
        summary="Delete a conversation with all its messages",
        status_code=204,
        responses={**NOT_FOUND, **AUTH_ERRORS},
    )
    async def delete_conversation(self, request: Request[Any, Any, Any], conversation_id: FromPath[uuid.UUID]) -> None:
        await _history(request).delete(_user(request).user_id, conversation_id)

    @post(
        "/conversations/{conversation_id:uuid}/stop",
        summary="Stop the reply being generated",
        description=(
            "Ends the running turn of the conversation, on whichever replica runs it: the reply so far is stored, "
            "marked `interrupted`, and the stream ends with its `done` event (`interrupted: true`)."
        ),
        status_code=202,
        responses={
            202: ResponseSpec(
                data_container=StopResponse,
                description="The turns asked to stop",
                examples=[
                    Example(
                        summary="One turn stopping",
                        value={
                            "conversation_id": CONVERSATION_EXAMPLE["id"],
                            "stopped_turn_ids": ["c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"],
                        },
                    )
                ],
            ),
            **NOT_FOUND,
            **AUTH_ERRORS,
        },
    )
    async def stop(self, request: Request[Any, Any, Any], conversation_id: FromPath[uuid.UUID]) -> StopResponse:
        streamer: TurnStreamer = request.app.state.streamer
        stopped = await streamer.stop(_user(request).user_id, conversation_id)
        return StopResponse(conversation_id, list(stopped))

    @get(
        "/conversations/{conversation_id:uuid}/turns/{turn_id:uuid}/events",
        summary="Resume a streamed reply",
        description=(
            "The turn's Server-Sent Events after `Last-Event-ID` (or `after`), replayed from the database and then "
            "followed live until its `done` or `error` event. Works on any replica, also after the turn ended."
        ),
        media_type=EVENT_STREAM,
        responses={
            200: ResponseSpec(
                data_container=str,
                media_type=EVENT_STREAM,
                description="The rest of the turn's events",
                examples=[Example(summary="A whole turn, from the start", value=SSE_EXAMPLE)],
            ),
            404: _error("Unknown turn, or another user's or conversation's", "Turn not found", 404),
            **AUTH_ERRORS,
        },
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[uuid.UUID],
        turn_id: FromPath[uuid.UUID],
        last_event_id: Annotated[
            int | None, HeaderParameter(name="Last-Event-ID", ge=0, description="The last event id the client saw.")
        ] = None,
        after: Annotated[
            int | None, Parameter(ge=0, description="Same as Last-Event-ID, for clients that cannot send headers.")
        ] = None,
    ) -> Stream:
        streamer: TurnStreamer = request.app.state.streamer
        start = last_event_id if last_event_id is not None else (after or 0)
        return event_stream(await streamer.resume(_user(request).user_id, conversation_id, turn_id, start))

    @get(
        "/tasks",
        summary="The user's tasks, oldest first (for a frontend's side panel)",
        tags=["tasks"],
        responses={
            200: ResponseSpec(
                data_container=list[TaskOut],
                description="The tasks",
                examples=[Example(summary="One pending task", value=TASKS_EXAMPLE)],
            ),
            **AUTH_ERRORS,
        },
    )
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[TaskFilter, Parameter(description="all, pending or completed.")] = "all",
    ) -> list[TaskOut]:
        tasks: TaskStore = request.app.state.tasks
        return [TaskOut.from_task(t) for t in await tasks.list(_user(request).user_id, status)]
