"""The Vercel AI SDK's UI message stream (protocol v1), rendered from a turn's events; its request and messages.

``useChat`` (``@ai-sdk/react``) with ``DefaultChatTransport`` (``ai`` 7.x) posts the whole chat and reads a
Server-Sent Events stream of UI message chunks, in the order ``uiMessageChunkSchema`` accepts them. chatcore
keeps the conversation itself, so only the last user message's text (or the approval responses on the last
assistant message) is read from the request, and the stream is computed from the events the turn stores
(``chatcore.turn_events``), not from the model: the POST that starts a turn, a resume after a reload and
another replica all render the same events the same way.

One assistant ``UIMessage`` stands for one turn's reply: a ``start-step``/``finish-step`` pair per model
call, the text of each call, and each tool call as a ``tool-<name>`` part carrying its output. Its id is
the id of the turn's final assistant message (announced in the ``turn`` event), so the stream and
``GET .../messages`` name the reply alike.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from chatcore.approvals import DENIED
from chatcore.conversations import HistoryEntry
from chatcore.entrypoints.http.json_bodies import decode_body
from chatcore.errors import InvalidMessage, InvalidRequest
from chatcore.external_chats import valid_chat_id
from chatcore.model import BusyPolicy, JsonValue, MessageStatus, Role, ToolCallRecord, ToolDecision, TurnEvent
from chatcore.service import parse_if_busy
from chatcore.turn_events import APPROVAL_REQUEST, DELTA, DONE, ERROR, TOOL_CALL, TOOL_RESULT, TURN

Chunk = dict[str, JsonValue]

UI_MESSAGE_STREAM_HEADERS: Final = {
    "x-vercel-ai-ui-message-stream": "v1",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
"""What the AI SDK's own ``createUIMessageStreamResponse`` sends beside ``content-type: text/event-stream``."""
DONE_LINE: Final = b"data: [DONE]\n\n"


class UIMessageStream:
    """Renders one turn's events, in order, as UI message chunks. Pure: the same events give the same chunks.

    ``message_id`` overrides the reply's id in ``start``: a continuation after an approval keeps the id of the
    assistant message the client is continuing, whose tool parts (``known_calls``) it does not announce again.
    """

    def __init__(self, *, message_id: str | None = None, known_calls: Iterable[str] = ()) -> None:
        self._message_id = message_id
        self._step_open = False
        self._after_results = False
        self._text_id: str | None = None
        self._step_text = ""
        self._announced_calls: set[str] = set(known_calls)
        self._awaiting_approval = False
        self._metadata: dict[str, JsonValue] = {}

    def render(self, event: TurnEvent) -> list[Chunk]:
        data = event.data
        chunks: list[Chunk] = []
        if event.type == TURN:
            message_id = self._message_id or str(data.get("message_id") or data["turn_id"])
            self._metadata = {"conversationId": data["conversation_id"], "turnId": data["turn_id"]}
            chunks.append({"type": "start", "messageId": message_id, "messageMetadata": dict(self._metadata)})
            self._open_step(chunks)
        elif event.type == DELTA:
            self._text(chunks, str(data["text"]), event.seq)
        elif event.type == TOOL_CALL:
            self._tool_input(chunks, data)
        elif event.type == TOOL_RESULT:
            self._close_text(chunks)
            call_id = str(data["id"])
            if "error" in data and str(data["error"]).startswith(DENIED):
                chunks.append({"type": "tool-output-denied", "toolCallId": call_id})
            elif "error" in data:
                chunks.append({"type": "tool-output-error", "toolCallId": call_id, "errorText": str(data["error"])})
            else:
                chunks.append({"type": "tool-output-available", "toolCallId": call_id, "output": data.get("result")})
            self._after_results = True
        elif event.type == APPROVAL_REQUEST:
            self._tool_input(chunks, data)
            call_id = str(data["id"])
            chunks.append({"type": "tool-approval-request", "approvalId": call_id, "toolCallId": call_id})
            self._awaiting_approval = True
        elif event.type == DONE:
            self._finish(chunks, data)
        elif event.type == ERROR:
            self._close_text(chunks)
            chunks.append({"type": "error", "errorText": str(data.get("detail") or "Internal server error")})
        return chunks

    def _open_step(self, chunks: list[Chunk]) -> None:
        chunks.append({"type": "start-step"})
        self._step_open, self._after_results, self._step_text = True, False, ""

    def _next_step_if_due(self, chunks: list[Chunk]) -> None:
        """Model output after tool results belongs to the next model call."""
        if self._after_results or not self._step_open:
            self._close_text(chunks)
            if self._step_open:
                chunks.append({"type": "finish-step"})
            self._open_step(chunks)

    def _text(self, chunks: list[Chunk], text: str, seq: int) -> None:
        if not text:
            return
        self._next_step_if_due(chunks)
        if self._text_id is None:
            self._text_id = f"text-{seq}"
            chunks.append({"type": "text-start", "id": self._text_id})
        chunks.append({"type": "text-delta", "id": self._text_id, "delta": text})
        self._step_text += text

    def _tool_input(self, chunks: list[Chunk], data: Mapping[str, JsonValue]) -> None:
        call_id = str(data["id"])
        if call_id in self._announced_calls:
            return
        self._next_step_if_due(chunks)
        self._close_text(chunks)
        name = str(data["name"])
        chunks.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})
        chunks.append(
            {"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": data.get("arguments")}
        )
        self._announced_calls.add(call_id)

    def _close_text(self, chunks: list[Chunk]) -> None:
        if self._text_id is not None:
            chunks.append({"type": "text-end", "id": self._text_id})
            self._text_id = None

    def _finish(self, chunks: list[Chunk], data: Mapping[str, JsonValue]) -> None:
        """The stored reply is the truth: text the model did not stream (the tool-step limit's note) is sent now."""
        response = str(data.get("response") or "")
        streamed = "" if self._after_results else self._step_text
        if response.startswith(streamed) and len(response) > len(streamed):
            self._text(chunks, response[len(streamed) :], 0)
        self._close_text(chunks)
        if self._step_open:
            chunks.append({"type": "finish-step"})
            self._step_open = False
        if data.get("interrupted"):
            reason = "interrupted"
        elif self._awaiting_approval or data.get("status") == "awaiting_approval":
            reason = "tool-calls"
        else:
            reason = "stop"
        finish: Chunk = {"type": "finish", "finishReason": reason}
        if "usage" in data:  # merged by the client into the message's metadata, beside the start part's keys
            finish["messageMetadata"] = {**self._metadata, "usage": data["usage"]}
        chunks.append(finish)


def sse_line(chunk: Chunk) -> bytes:
    """One chunk as the AI SDK's ``JsonToSseTransformStream`` writes it."""
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


# --- the request -------------------------------------------------------------------------------------------------


class Trigger(enum.StrEnum):
    SUBMIT = "submit-message"
    REGENERATE = "regenerate-message"


class _Approval(msgspec.Struct):
    id: str
    approved: bool | None = None
    reason: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    type: str
    text: str | None = None
    state: str | None = None
    tool_call_id: str | None = None
    approval: _Approval | None = None


class _Message(msgspec.Struct):
    role: str
    parts: list[_Part]
    id: str | None = None


class _Body(msgspec.Struct, rename="camel"):
    id: str
    messages: list[_Message]
    trigger: str = Trigger.SUBMIT.value
    message_id: str | None = None
    if_busy: Any = msgspec.field(default=None, name="if_busy")
    """chatcore's own field, sent beside the transport's (``useChat``'s ``body``): what to do on a busy chat."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What chatcore reads from a ``DefaultChatTransport`` request; everything else in it is ignored."""

    chat_id: str
    trigger: Trigger
    text: str | None = None
    """The last user message's text (``submit-message`` with a user message last)."""
    approvals: tuple[ToolDecision, ...] = ()
    """The approval responses on the last message (``submit-message`` continuing an assistant message): a part in
    ``approval-responded`` decides the call its ``approval.id`` names (chatcore's approval ids are call ids)."""
    message_id: str | None = None
    """The id of the message the client continues or regenerates, as it sent it."""
    if_busy: BusyPolicy | None = None
    """The body's ``if_busy`` (as ``POST /chat`` takes it), for a new message; None: the server's default."""


def parse_chat_request(body: bytes) -> ChatRequest:
    """The request, or InvalidRequest/InvalidMessage (400) saying what is wrong with it."""
    decoded = decode_body(body, _Body, name="request body")
    chat_id = valid_chat_id(decoded.id)
    try:
        trigger = Trigger(decoded.trigger)
    except ValueError:
        raise InvalidRequest("trigger must be submit-message or regenerate-message") from None
    if trigger is Trigger.REGENERATE:
        return ChatRequest(chat_id, trigger, message_id=decoded.message_id)
    if not decoded.messages:
        raise InvalidRequest("messages must not be empty")
    last = decoded.messages[-1]
    if last.role == "user":
        text = "\n".join(part.text for part in last.parts if part.type == "text" and part.text)
        if not text.strip():
            raise InvalidMessage("The last user message has no text")
        return ChatRequest(
            chat_id, trigger, text=text, message_id=decoded.message_id, if_busy=parse_if_busy(decoded.if_busy)
        )
    approvals = tuple(
        ToolDecision(part.approval.id, part.approval.approved, part.approval.reason)
        for part in last.parts
        if part.state == "approval-responded" and part.approval is not None and part.approval.approved is not None
    )
    if last.role != "assistant" or not approvals:
        raise InvalidRequest("The last message must be a user message, or an assistant message with approval responses")
    return ChatRequest(chat_id, trigger, approvals=approvals, message_id=last.id or decoded.message_id)


# --- the conversation as UIMessage[] ------------------------------------------------------------------------------


def ui_messages(entries: Sequence[HistoryEntry]) -> list[Chunk]:
    """The conversation as ``UIMessage[]`` for ``useChat({messages})``: a user message each, and one assistant
    message per reply (every assistant message up to the next user message), named like its final message.

    Superseded replies (regenerated since) are left out: they are not the conversation's current branch.
    """
    rendered: list[Chunk] = []
    reply: Chunk | None = None
    for entry in entries:
        message = entry.message
        if message.status is MessageStatus.SUPERSEDED:
            continue
        if message.role is Role.USER:
            reply = None
            rendered.append(
                {"id": str(message.id), "role": "user", "parts": [{"type": "text", "text": message.content}]}
            )
            continue
        if reply is None:
            reply = {"id": str(message.id), "role": "assistant", "parts": []}
            rendered.append(reply)
        parts = reply["parts"]
        assert isinstance(parts, list)
        parts.append({"type": "step-start"})
        if message.content:
            parts.append({"type": "text", "text": message.content, "state": "done"})
        parts.extend(tool_part(record) for record in entry.tool_calls)
        reply["id"] = str(message.id)
    return rendered


def tool_part(record: ToolCallRecord) -> Chunk:
    """A tool call in its last state, as the AI SDK's static tool part ``tool-<name>``: its output or error, and for
    a call that needed approval the approval (``approval-requested`` while pending, ``output-denied`` if denied)."""
    part: Chunk = {"type": f"tool-{record.name}", "toolCallId": record.id, "input": dict(record.arguments)}
    approval = record.approval
    if approval is not None:
        decided: Chunk = {"id": record.id}
        if not approval.pending:
            decided["approved"] = bool(approval.approved)
            if approval.reason:
                decided["reason"] = approval.reason
        part["approval"] = decided
        if approval.pending:
            return {**part, "state": "approval-requested"}
        if not approval.approved:
            return {**part, "state": "output-denied"}
    if record.error is not None:
        part.update(state="output-error", errorText=record.error)
    else:
        part.update(state="output-available", output=record.result)
    return part
