"""The AI SDK's and AG-UI's endpoints: the same turns as ``POST /chat``, streamed in the frontends' own protocols.

Each request resolves its chat id (``chatcore.external_chats``), starts the turn through the app's one
``TurnStreamer`` (so a stop or a native SSE client sees the same turn) and renders its events with
``ai_sdk.UIMessageStream`` or ``ag_ui.AgUiEventStream``. A turn that fails before its first event
(a busy conversation, the database down) is answered with the status and JSON body ``POST /chat``
would give; once the stream has started, a failure is the protocol's own error event.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, OpenAPIType, Operation, Reference, RequestBody, Schema
from litestar.params import FromPath
from litestar.response import Response, Stream

from chatcore.conversations import ConversationHistory, HistoryEntry
from chatcore.entrypoints.http.ag_ui import AgUiEventStream, parse_run_input
from chatcore.entrypoints.http.ai_sdk import (
    DONE_LINE,
    UI_MESSAGE_STREAM_HEADERS,
    Chunk,
    Trigger,
    UIMessageStream,
    parse_chat_request,
    sse_line,
    ui_messages,
)
from chatcore.entrypoints.http.auth import BEARER_SECURITY, principal_of, require_path_user
from chatcore.entrypoints.http.dto import error_spec as _error
from chatcore.errors import ConversationNotFound
from chatcore.external_chats import ExternalChats
from chatcore.model import BusyPolicy, JsonValue, Principal, TurnEvent
from chatcore.service import title_from, validate_message
from chatcore.streamed_turns import TurnStreamer
from chatcore.turn_events import ERROR

EVENT_STREAM: Final = "text/event-stream"
STREAM_HEADERS: Final = {"cache-control": "no-cache", "x-accel-buffering": "no"}
HISTORY_PAGE: Final = 200

Render = Callable[[TurnEvent], list[Chunk]]


class ServerSentEvent(msgspec.Struct):
    """One event of these streams as OpenAPI describes an event-stream item: a ``data`` line and nothing else."""

    data: Annotated[
        str, msgspec.Meta(description="One chunk (AI SDK) or event (AG-UI) as JSON; the AI SDK's last is [DONE]")
    ]


async def attach_frontends(state: State, container: Any) -> None:
    """Put what these controllers need on the app state (called by the app's lifespan, after the resources start)."""
    aliases, reader = container.conversation_aliases(), container.reader()
    aliases = await aliases if inspect.isawaitable(aliases) else aliases
    reader = await reader if inspect.isawaitable(reader) else reader
    state.external_chats = ExternalChats(reader, aliases)


def _chats(request: Request[Any, Any, Any]) -> ExternalChats:
    chats: ExternalChats = request.app.state.external_chats
    return chats


async def _known(chats: ExternalChats, user_id: str, chat_id: str) -> uuid.UUID:
    """The conversation a chat id already names (regenerating or deciding needs one); ConversationNotFound if none."""
    conversation_id = await chats.find(user_id, chat_id)
    if conversation_id is None:
        raise ConversationNotFound()
    return conversation_id


def _streamer(request: Request[Any, Any, Any]) -> TurnStreamer:
    streamer: TurnStreamer = request.app.state.streamer
    return streamer


async def _start_in_chat(
    streamer: TurnStreamer,
    chats: ExternalChats,
    principal: Principal,
    chat_id: str,
    message: str | None,
    if_busy: BusyPolicy | None = None,
) -> AsyncIterator[TurnEvent]:
    """A new message in a frontend's chat, streamed. The budget is checked before the chat's conversation is made on
    the id's first use, so a refused message (429) leaves nothing behind."""
    text = validate_message(message or "")
    meter = await streamer.service.meter_for(principal)
    try:
        conversation_id = await chats.open(principal.user_id, chat_id, title=title_from(text))
    except BaseException:
        meter.close()
        raise
    return await streamer.start(principal, text, conversation_id, meter=meter, if_busy=if_busy)


async def _close(events: AsyncIterator[TurnEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()


def _failed_before_streaming(data: Any) -> Response[Any]:
    """The error event of a turn that failed before it began, answered as ``POST /chat`` answers it."""
    status = data.get("status_code", 500)
    body: dict[str, JsonValue] = {"status_code": status, "detail": data.get("detail", "Internal server error")}
    if "conversation_id" in data:
        body["conversation_id"] = data["conversation_id"]
    retry_after = data.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if isinstance(retry_after, int) else {}
    return Response(body, status_code=status if isinstance(status, int) else 500, headers=headers)


async def event_stream(
    events: AsyncIterator[TurnEvent], render: Render, *, headers: dict[str, str], last: bytes = b""
) -> Response[Any]:
    """Turn events as Server-Sent Events of ``render``'s chunks (``data: <json>`` each), then ``last``.

    The first event is awaited here: a turn that fails before it begins gets its HTTP status instead.
    Closing the response (the client left) leaves the turn running.
    """
    first = await anext(events, None)
    if first is not None and first.type == ERROR:
        await _close(events)
        return _failed_before_streaming(first.data)

    async def lines() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                for chunk in render(first):
                    yield sse_line(chunk)
            async for event in events:
                for chunk in render(event):
                    yield sse_line(chunk)
            if last:
                yield last
        finally:
            await _close(events)

    return Stream(lines(), media_type=EVENT_STREAM, headers=headers)


async def history_of(history: ConversationHistory, user_id: str, conversation_id: uuid.UUID) -> list[HistoryEntry]:
    """Every message of the conversation, oldest first, page by page."""
    entries: list[HistoryEntry] = []
    cursor: str | None = None
    while True:
        page = await history.messages(user_id, conversation_id, limit=HISTORY_PAGE, cursor=cursor)
        entries.extend(page.items)
        if page.next_cursor is None:
            return entries
        cursor = page.next_cursor


# --- OpenAPI ------------------------------------------------------------------------------------------------------


def _with_body(schema: Schema, examples: dict[str, Example | Reference]) -> type[Operation]:
    """An operation whose JSON request body is documented by hand: these handlers read the raw body themselves,
    so that any malformed one (wrong types, nesting too deep to decode) is a 400 with a detail."""

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema, examples=examples)}, required=True
            )

    return WithBody


def _stream_spec(description: str, example: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ServerSentEvent,
        media_type=EVENT_STREAM,
        description=description,
        examples=[Example(summary="A turn with a tool call", value=example)],
    )


def _object(description: str, properties: dict[str, Schema | Reference], required: Sequence[str] = ()) -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT, description=description, properties=properties, required=list(required) or None
    )


def _string(description: str, enum: Sequence[str] | None = None) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description, enum=list(enum) if enum else None)


_PARTS = Schema(
    type=OpenAPIType.ARRAY,
    items=_object(
        "A UI message part: {type: 'text', text}, a tool part {type: 'tool-<name>', toolCallId, state, ...}, ...",
        {"type": _string("The part's kind")},
        ["type"],
    ),
)
_UI_MESSAGE = _object(
    "A UIMessage",
    {
        "id": _string("The message's id"),
        "role": _string("Who wrote it", ["system", "user", "assistant"]),
        "parts": _PARTS,
    },
    ["role", "parts"],
)
AI_SDK_CHAT_SCHEMA = _object(
    "What DefaultChatTransport sends. Only the last message is read: a user message's text parts, or the approval "
    "responses (tool parts in state approval-responded) of an assistant message; the stored history is the truth.",
    {
        "id": _string(
            "The chat id: one of the user's conversation ids, or any other id, which names a conversation of its own "
            "(created on first use)"
        ),
        "messages": Schema(type=OpenAPIType.ARRAY, items=_UI_MESSAGE),
        "trigger": _string(
            "submit-message (default), or regenerate-message: the last reply again", [t.value for t in Trigger]
        ),
        "messageId": _string("The message continued or regenerated, as the client names it"),
    },
    ["id", "messages"],
)
AI_SDK_CHAT_EXAMPLES: dict[str, Example | Reference] = {
    "submit": Example(
        summary="A new message",
        value={
            "id": "Jq4bXy1Tn0cE2wR8",
            "trigger": "submit-message",
            "messages": [
                {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Add a task to buy milk"}]},
            ],
        },
    ),
    "regenerate": Example(
        summary="The last reply again",
        value={
            "id": "Jq4bXy1Tn0cE2wR8",
            "trigger": "regenerate-message",
            "messageId": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Add a task to buy milk"}]}],
        },
    ),
}
AI_SDK_STREAM_EXAMPLE = (
    'data: {"type":"start","messageId":"5a6b7c8d-…","messageMetadata":{"conversationId":"7b0c…","turnId":"c3d4…"}}\n\n'
    'data: {"type":"start-step"}\n\n'
    'data: {"type":"tool-input-start","toolCallId":"call_1","toolName":"add_task"}\n\n'
    'data: {"type":"tool-input-available","toolCallId":"call_1","toolName":"add_task","input":{"title":"Buy milk"}}\n\n'
    'data: {"type":"tool-output-available","toolCallId":"call_1","output":{"task_id":1,"status":"created"}}\n\n'
    'data: {"type":"finish-step"}\n\n'
    'data: {"type":"start-step"}\n\n'
    'data: {"type":"text-start","id":"text-4"}\n\n'
    'data: {"type":"text-delta","id":"text-4","delta":"I\'ve added "}\n\n'
    'data: {"type":"text-delta","id":"text-4","delta":"\'Buy milk\'."}\n\n'
    'data: {"type":"text-end","id":"text-4"}\n\n'
    'data: {"type":"finish-step"}\n\n'
    'data: {"type":"finish","finishReason":"stop"}\n\n'
    "data: [DONE]\n\n"
)
AG_UI_INPUT_SCHEMA = _object(
    "AG-UI's RunAgentInput. Only the last user message is read (or, to continue an interrupted run, resume); tools, "
    "context, state and forwardedProps are accepted and ignored.",
    {
        "threadId": _string("Names the conversation, like the AI SDK's chat id"),
        "runId": _string("The client's id for this run, echoed in RUN_STARTED and RUN_FINISHED"),
        "messages": Schema(
            type=OpenAPIType.ARRAY,
            items=_object("An AG-UI message", {"id": _string("Its id"), "role": _string("Its role")}, ["role"]),
        ),
        "resume": Schema(
            type=OpenAPIType.ARRAY,
            items=_object(
                "An answer to one interrupt of the previous run: status resolved with payload {approved, reason?}, "
                "or cancelled (denied)",
                {"interruptId": _string("The interrupt's id"), "status": _string("", ["resolved", "cancelled"])},
                ["interruptId", "status"],
            ),
        ),
    },
    ["threadId", "runId", "messages"],
)
AG_UI_EXAMPLES: dict[str, Example | Reference] = {
    "run": Example(
        summary="A new message",
        value={
            "threadId": "thread-1",
            "runId": "run-1",
            "messages": [{"id": "m1", "role": "user", "content": "Add a task to buy milk"}],
            "tools": [],
            "context": [],
            "state": {},
            "forwardedProps": {},
        },
    )
}
AG_UI_STREAM_EXAMPLE = (
    'data: {"type":"RUN_STARTED","threadId":"thread-1","runId":"run-1"}\n\n'
    'data: {"type":"TOOL_CALL_START","toolCallId":"call_1","toolCallName":"add_task","parentMessageId":"c3d4…:1"}\n\n'
    'data: {"type":"TOOL_CALL_ARGS","toolCallId":"call_1","delta":"{\\"title\\": \\"Buy milk\\"}"}\n\n'
    'data: {"type":"TOOL_CALL_END","toolCallId":"call_1"}\n\n'
    'data: {"type":"TOOL_CALL_RESULT","messageId":"call_1:result","toolCallId":"call_1",'
    '"content":"{\\"task_id\\": 1}","role":"tool"}\n\n'
    'data: {"type":"TEXT_MESSAGE_START","messageId":"c3d4…:2","role":"assistant"}\n\n'
    'data: {"type":"TEXT_MESSAGE_CONTENT","messageId":"c3d4…:2","delta":"I\'ve added \'Buy milk\'."}\n\n'
    'data: {"type":"TEXT_MESSAGE_END","messageId":"c3d4…:2"}\n\n'
    'data: {"type":"RUN_FINISHED","threadId":"thread-1","runId":"run-1","result":{"conversationId":"7b0c…",'
    '"messageId":"5a6b…","response":"I\'ve added \'Buy milk\'."},"outcome":{"type":"success"}}\n\n'
)
UI_MESSAGES_EXAMPLE = [
    {"id": "2c9d…", "role": "user", "parts": [{"type": "text", "text": "Add a task to buy milk"}]},
    {
        "id": "5a6b…",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {
                "type": "tool-add_task",
                "toolCallId": "call_1",
                "state": "output-available",
                "input": {"title": "Buy milk"},
                "output": {"task_id": 1, "status": "created"},
            },
            {"type": "step-start"},
            {"type": "text", "text": "I've added 'Buy milk'.", "state": "done"},
        ],
    },
]

AUTH_ERRORS = {
    401: _error("Missing, malformed, badly signed or expired token", "Missing or invalid bearer token", 401),
    403: _error("The path user is not the token's subject", "Access denied", 403),
}
TURN_ERRORS = {
    400: _error("A malformed body, or the last message has no text", "The last user message has no text", 400),
    **AUTH_ERRORS,
    404: _error("Regenerating or approving in a chat the user does not have", "Conversation not found", 404),
    409: _error(
        "Another turn holds the conversation past CHATCORE_TURN_WAIT_SECONDS (Retry-After)",
        "Another turn is in progress on this conversation",
        409,
    ),
    413: _error("The request body is over CHATCORE_MAX_BODY_BYTES", "Request body is too large", 413),
    429: _error("Over the user's CHATCORE_RATE_LIMIT (Retry-After)", "Too many requests", 429),
    503: _error("The database or the auth server is unavailable (Retry-After)", "The database is unavailable", 503),
}


class AiSdkController(Controller):
    """``useChat`` pointed at ``/api/{user_id}/ai-sdk/chat`` (``DefaultChatTransport({api, headers})``)."""

    path = "/api/{user_id:str}/ai-sdk/chat"
    guards = [require_path_user]
    security = [{BEARER_SECURITY: []}]
    tags = ["ai-sdk"]

    @post(
        "/",
        summary="Vercel AI SDK: send a message (or regenerate, or answer approvals) and stream the reply",
        description=(
            "The AI SDK UI message stream protocol v1, as `DefaultChatTransport` (`ai` 7.x) speaks it: the answer is "
            "Server-Sent Events (`data: <chunk json>` lines, header `x-vercel-ai-ui-message-stream: v1`) ending with "
            "`data: [DONE]`: `start` (messageId: the reply's final message id), `start-step`/`finish-step` per model "
            "call, `text-start`/`text-delta`/`text-end`, `tool-input-start` + `tool-input-available` and "
            "`tool-output-available` or `tool-output-error` per tool call, `finish`. The turn is the same one "
            "`POST /chat` runs: stored, stoppable with `POST .../conversations/{id}/stop`, resumable with "
            "`GET .../ai-sdk/chat/{id}/stream`, and it completes even if the client disconnects. A turn that fails "
            "before it starts is answered with the JSON error `POST /chat` gives; later, with an `error` chunk."
        ),
        status_code=200,
        operation_class=_with_body(AI_SDK_CHAT_SCHEMA, AI_SDK_CHAT_EXAMPLES),
        responses={
            200: _stream_spec("The reply as UI message chunks", AI_SDK_STREAM_EXAMPLE),
            **TURN_ERRORS,
        },
    )
    async def chat(self, request: Request[Any, Any, Any]) -> Response[Any]:
        principal = principal_of(request)
        chat = parse_chat_request(await request.body())
        chats, streamer = _chats(request), _streamer(request)
        renderer = UIMessageStream()
        if chat.trigger is Trigger.REGENERATE:
            events = await streamer.regenerate(principal, await _known(chats, principal.user_id, chat.chat_id))
        elif chat.approvals:
            conversation_id = await _known(chats, principal.user_id, chat.chat_id)
            events = await streamer.decide(principal, conversation_id, chat.approvals)
            known = [decision.tool_call_id for decision in chat.approvals]
            renderer = UIMessageStream(message_id=chat.message_id, known_calls=known)
        else:
            events = await _start_in_chat(streamer, chats, principal, chat.chat_id, chat.text, chat.if_busy)
        return await event_stream(events, renderer.render, headers=UI_MESSAGE_STREAM_HEADERS, last=DONE_LINE)

    @get(
        "/{chat_id:str}/stream",
        summary="Vercel AI SDK: resume the running reply (useChat's resume)",
        description=(
            "What `useChat({resume: true})` calls on mount (`DefaultChatTransport.reconnectToStream`): 204 when no "
            "turn of the chat is running; else the running turn's chunks from its start, replayed from the database "
            "and then followed live until its end, on whichever replica runs it. No Redis is needed."
        ),
        responses={
            200: _stream_spec("The running reply, from its start", AI_SDK_STREAM_EXAMPLE),
            204: ResponseSpec(data_container=None, description="No turn of this chat is running"),
            400: _error("A chat id that is empty, too long or has control characters", "Invalid chat id", 400),
            **AUTH_ERRORS,
        },
    )
    async def resume(self, request: Request[Any, Any, Any], chat_id: FromPath[str]) -> Response[Any]:
        user_id = principal_of(request).user_id
        conversation_id = await _chats(request).find(user_id, chat_id)
        streamer = _streamer(request)
        running = None if conversation_id is None else await streamer.events.running(user_id, conversation_id)
        if conversation_id is None or running is None:
            return Response(None, status_code=204)
        events = await streamer.resume(user_id, conversation_id, running.id)
        return await event_stream(events, UIMessageStream().render, headers=UI_MESSAGE_STREAM_HEADERS, last=DONE_LINE)

    @get(
        "/{chat_id:str}/messages",
        summary="Vercel AI SDK: the chat as UIMessage[] (for useChat({messages}) after a reload)",
        description=(
            "A user message each, and one assistant message per reply: a `step-start` per model call, its text, "
            "and its tool calls as `tool-<name>` parts in their final states. A reply's id is its final message's, "
            "as in the stream's `start`. Replies regenerated since are left out (the history API shows them, marked "
            "`superseded`). An id that names no conversation of the user yet gives `[]`."
        ),
        responses={
            200: ResponseSpec(
                data_container=list[dict[str, Any]],
                description="The chat's messages, oldest first",
                examples=[Example(summary="A turn with a tool call", value=UI_MESSAGES_EXAMPLE)],
            ),
            400: _error("A chat id that is empty, too long or has control characters", "Invalid chat id", 400),
            **AUTH_ERRORS,
        },
    )
    async def messages(self, request: Request[Any, Any, Any], chat_id: FromPath[str]) -> list[dict[str, Any]]:
        user_id = principal_of(request).user_id
        conversation_id = await _chats(request).find(user_id, chat_id)
        if conversation_id is None:
            return []
        history: ConversationHistory = request.app.state.history
        return ui_messages(await history_of(history, user_id, conversation_id))


class AgUiController(Controller):
    """An AG-UI agent at ``/api/{user_id}/ag-ui`` (``new HttpAgent({url, headers})``)."""

    path = "/api/{user_id:str}/ag-ui"
    guards = [require_path_user]
    security = [{BEARER_SECURITY: []}]
    tags = ["ag-ui"]

    @post(
        "/",
        summary="AG-UI: run the agent on the thread's last user message (or resume an interrupted run)",
        description=(
            "AG-UI 1.0 over Server-Sent Events (`data: <event json>`): `RUN_STARTED`, `TEXT_MESSAGE_START`/"
            "`CONTENT`/`END`, `TOOL_CALL_START`/`ARGS`/`END`, `TOOL_CALL_RESULT`, then `RUN_FINISHED` (outcome "
            "`success`; `cancelled` when stopped; `interrupt` with one interrupt per tool call awaiting approval) or "
            "`RUN_ERROR`. The threadId names the conversation like the AI SDK's chat id. The turn is the one "
            "`POST /chat` runs: stored, stoppable, and it completes even if the client disconnects."
        ),
        status_code=200,
        operation_class=_with_body(AG_UI_INPUT_SCHEMA, AG_UI_EXAMPLES),
        responses={
            200: _stream_spec("The run's AG-UI events", AG_UI_STREAM_EXAMPLE),
            **TURN_ERRORS,
        },
    )
    async def run(self, request: Request[Any, Any, Any]) -> Response[Any]:
        principal = principal_of(request)
        run = parse_run_input(await request.body())
        chats, streamer = _chats(request), _streamer(request)
        if run.approvals:
            conversation_id = await _known(chats, principal.user_id, run.thread_id)
            events = await streamer.decide(principal, conversation_id, run.approvals)
        else:
            events = await _start_in_chat(streamer, chats, principal, run.thread_id, run.text, run.if_busy)
        known = [decision.tool_call_id for decision in run.approvals]
        renderer = AgUiEventStream(thread_id=run.thread_id, run_id=run.run_id, known_calls=known)
        return await event_stream(events, renderer.render, headers=STREAM_HEADERS)
