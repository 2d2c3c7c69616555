"""AG-UI (protocol 1.0, ``@ag-ui/client`` 1.x): a ``RunAgentInput`` in, the run's events out, from a turn's events.

An AG-UI client (``HttpAgent``, CopilotKit) posts a ``RunAgentInput`` and reads Server-Sent Events whose
``data`` is one AG-UI event each. chatcore keeps the thread itself: only the last user message is read
(or, on a run that resumes an interrupted one, its ``resume`` entries), and the run's events are
rendered from the events the turn stores (``chatcore.turn_events``), like the AI SDK's stream.

A tool call that waits for the user's approval ends the run with AG-UI 1.0's interrupt outcome
(``RUN_FINISHED`` with ``outcome: {"type": "interrupt", "interrupts": [...]}``, one interrupt per pending
call, its ``id`` the tool call's id); the next run answers them in ``resume``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from chatcore.entrypoints.http.ai_sdk import Chunk
from chatcore.entrypoints.http.json_bodies import decode_body
from chatcore.errors import InvalidMessage, InvalidRequest
from chatcore.external_chats import valid_chat_id
from chatcore.model import BusyPolicy, JsonValue, ToolDecision, TurnEvent
from chatcore.service import parse_if_busy
from chatcore.turn_events import APPROVAL_REQUEST, DELTA, DONE, ERROR, TOOL_CALL, TOOL_RESULT, TURN

APPROVAL_REASON: Final = "tool_approval"
"""The ``reason`` of an interrupt that asks to approve a tool call."""
APPROVAL_RESPONSE_SCHEMA: Final = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["approved"],
}
"""What a resume entry's ``payload`` answers an approval with; ``status: "cancelled"`` denies too."""


class AgUiEventStream:
    """Renders one turn's events, in order, as the AG-UI events of one run. Pure, like ``ai_sdk.UIMessageStream``.

    The assistant messages are named per model call (``<turn id>:<step>``), tool results after their call. A run
    that resumes interrupts does not announce their calls (``known_calls``) again: the client has them.
    """

    def __init__(self, *, thread_id: str, run_id: str, known_calls: Iterable[str] = ()) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._turn_id = ""
        self._step = 0
        self._after_results = False
        self._text_open = False
        self._announced_calls: set[str] = set(known_calls)
        self._interrupts: list[Chunk] = []
        self._step_text = ""

    def render(self, event: TurnEvent) -> list[Chunk]:
        data = event.data
        events: list[Chunk] = []
        if event.type == TURN:
            self._turn_id = str(data["turn_id"])
            self._step = 1
            events.append({"type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id})
        elif event.type == DELTA:
            self._text(events, str(data["text"]))
        elif event.type == TOOL_CALL:
            self._tool_call(events, data)
        elif event.type == TOOL_RESULT:
            self._close_text(events)
            call_id = str(data["id"])
            content = {"error": data["error"]} if "error" in data else data.get("result")
            events.append(
                {
                    "type": "TOOL_CALL_RESULT",
                    "messageId": f"{call_id}:result",
                    "toolCallId": call_id,
                    "content": json.dumps(content, ensure_ascii=False),
                    "role": "tool",
                }
            )
            self._after_results = True
        elif event.type == APPROVAL_REQUEST:
            self._tool_call(events, data)
            call_id = str(data["id"])
            self._interrupts.append(
                {
                    "id": call_id,
                    "reason": APPROVAL_REASON,
                    "message": f"Allow {data['name']} with {json.dumps(data.get('arguments'), ensure_ascii=False)}?",
                    "toolCallId": call_id,
                    "responseSchema": APPROVAL_RESPONSE_SCHEMA,
                }
            )
        elif event.type == DONE:
            self._finish(events, data)
        elif event.type == ERROR:
            events.append(
                {
                    "type": "RUN_ERROR",
                    "message": str(data.get("detail") or "Internal server error"),
                    "code": str(data.get("status_code", 500)),
                }
            )
        return events

    @property
    def _message_id(self) -> str:
        return f"{self._turn_id}:{self._step}"

    def _next_step_if_due(self, events: list[Chunk]) -> None:
        if self._after_results:
            self._close_text(events)
            self._step += 1
            self._after_results, self._step_text = False, ""

    def _text(self, events: list[Chunk], text: str) -> None:
        if not text:
            return
        self._next_step_if_due(events)
        if not self._text_open:
            events.append({"type": "TEXT_MESSAGE_START", "messageId": self._message_id, "role": "assistant"})
            self._text_open = True
        events.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": self._message_id, "delta": text})
        self._step_text += text

    def _tool_call(self, events: list[Chunk], data: Mapping[str, JsonValue]) -> None:
        call_id = str(data["id"])
        if call_id in self._announced_calls:
            return
        self._next_step_if_due(events)
        self._close_text(events)
        events.append(
            {
                "type": "TOOL_CALL_START",
                "toolCallId": call_id,
                "toolCallName": str(data["name"]),
                "parentMessageId": self._message_id,
            }
        )
        arguments = json.dumps(data.get("arguments") or {}, ensure_ascii=False)
        events.append({"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": arguments})
        events.append({"type": "TOOL_CALL_END", "toolCallId": call_id})
        self._announced_calls.add(call_id)

    def _close_text(self, events: list[Chunk]) -> None:
        if self._text_open:
            events.append({"type": "TEXT_MESSAGE_END", "messageId": self._message_id})
            self._text_open = False

    def _finish(self, events: list[Chunk], data: Mapping[str, JsonValue]) -> None:
        response = str(data.get("response") or "")
        streamed = "" if self._after_results else self._step_text
        if response.startswith(streamed) and len(response) > len(streamed):
            self._text(events, response[len(streamed) :])
        self._close_text(events)
        outcome: Chunk
        if self._interrupts:
            outcome = {"type": "interrupt", "interrupts": list(self._interrupts)}
        elif data.get("interrupted"):
            outcome = {"type": "cancelled"}
        else:
            outcome = {"type": "success"}
        events.append(
            {
                "type": "RUN_FINISHED",
                "threadId": self.thread_id,
                "runId": self.run_id,
                "result": {
                    "conversationId": data.get("conversation_id"),
                    "messageId": data.get("message_id"),
                    "response": response,
                    **({"usage": data["usage"]} if "usage" in data else {}),
                },
                "outcome": outcome,
            }
        )


# --- the request -------------------------------------------------------------------------------------------------


class _ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_ContentPart] | None = None
    id: str | None = None


class _ResumeEntry(msgspec.Struct, rename="camel"):
    interrupt_id: str
    status: str
    payload: Any = None


class _RunAgentInput(msgspec.Struct, rename="camel"):
    thread_id: str
    run_id: str
    messages: list[_Message]
    resume: list[_ResumeEntry] | None = None
    forwarded_props: Any = None


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What chatcore reads from a ``RunAgentInput``; tools, context, state and forwardedProps are ignored."""

    thread_id: str
    run_id: str
    text: str | None = None
    """The last user message's text, when the run does not resume an interrupted one."""
    if_busy: BusyPolicy | None = None
    """``forwardedProps.if_busy`` (as ``POST /chat`` takes it); None: the server's default."""
    approvals: tuple[ToolDecision, ...] = ()
    """The decisions of the ``resume`` entries."""


def parse_run_input(body: bytes) -> RunRequest:
    """The run's input, or InvalidRequest/InvalidMessage (400) saying what is wrong with it."""
    decoded = decode_body(body, _RunAgentInput, name="RunAgentInput")
    thread_id, run_id = valid_chat_id(decoded.thread_id), decoded.run_id
    if decoded.resume:
        return RunRequest(thread_id, run_id, approvals=tuple(_decision(entry) for entry in decoded.resume))
    if not decoded.messages or decoded.messages[-1].role != "user":
        raise InvalidRequest("The last message must be the user's (or the run must resume an interrupted one)")
    content = decoded.messages[-1].content
    if isinstance(content, list):
        content = "\n".join(part.text for part in content if part.type == "text" and part.text)
    if not content or not content.strip():
        raise InvalidMessage("The last user message has no text")
    props = decoded.forwarded_props
    if_busy = parse_if_busy(props.get("if_busy") if isinstance(props, dict) else None)
    return RunRequest(thread_id, run_id, text=content, if_busy=if_busy)


def _decision(entry: _ResumeEntry) -> ToolDecision:
    """``resolved`` with ``{"approved": bool, "reason"?}`` (no payload approves), or ``cancelled`` (denies)."""
    if entry.status == "cancelled":
        return ToolDecision(entry.interrupt_id, approved=False, reason=_reason(entry.payload))
    if entry.status != "resolved":
        raise InvalidRequest("A resume entry's status must be resolved or cancelled")
    payload = entry.payload
    if payload is None:
        return ToolDecision(entry.interrupt_id, approved=True)
    approved = payload.get("approved") if isinstance(payload, dict) else None
    if not isinstance(approved, bool):
        raise InvalidRequest('A resolved approval\'s payload must be {"approved": true|false, "reason"?: string}')
    return ToolDecision(entry.interrupt_id, approved=approved, reason=_reason(payload))


def _reason(payload: Any) -> str | None:
    reason = payload.get("reason") if isinstance(payload, dict) else None
    return reason if isinstance(reason, str) else None
