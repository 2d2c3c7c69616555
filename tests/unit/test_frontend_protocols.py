"""The AI SDK and AG-UI renderings of turn events, and the requests of both protocols: pure functions, no I/O."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from chatcore.entrypoints.http.ag_ui import AgUiEventStream, parse_run_input
from chatcore.entrypoints.http.ai_sdk import Trigger, UIMessageStream, parse_chat_request
from chatcore.errors import InvalidMessage, InvalidRequest
from chatcore.model import JsonValue, ToolDecision, TurnEvent

TURN_ID = "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"
CONVERSATION_ID = "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11"
REPLY_ID = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"


def events(*items: tuple[str, dict[str, JsonValue]]) -> list[TurnEvent]:
    return [TurnEvent(uuid.UUID(TURN_ID), seq, kind, data) for seq, (kind, data) in enumerate(items, start=1)]


TURN = (
    "turn",
    {"conversation_id": CONVERSATION_ID, "turn_id": TURN_ID, "user_message_id": "u", "message_id": REPLY_ID},
)
CALL = ("tool_call", {"id": "call_1", "name": "add_task", "arguments": {"title": "Buy milk"}})
RESULT = ("tool_result", {"id": "call_1", "name": "add_task", "result": {"task_id": 1}})


def done(response: str, **extra: JsonValue) -> tuple[str, dict[str, JsonValue]]:
    return ("done", {"conversation_id": CONVERSATION_ID, "message_id": REPLY_ID, "response": response, **extra})


def ai_sdk(turn_events: list[TurnEvent], **options: Any) -> list[dict[str, JsonValue]]:
    renderer = UIMessageStream(**options)
    return [chunk for event in turn_events for chunk in renderer.render(event)]


def test_a_turn_with_a_tool_call_is_two_steps_of_one_message() -> None:
    chunks = ai_sdk(
        events(TURN, ("delta", {"text": "Sure, "}), CALL, RESULT, ("delta", {"text": "done."}), done("done."))
    )

    assert chunks == [
        {
            "type": "start",
            "messageId": REPLY_ID,
            "messageMetadata": {"conversationId": CONVERSATION_ID, "turnId": TURN_ID},
        },
        {"type": "start-step"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Sure, "},
        {"type": "text-end", "id": "text-2"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "add_task"},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "add_task",
            "input": {"title": "Buy milk"},
        },
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"task_id": 1}},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-5"},
        {"type": "text-delta", "id": "text-5", "delta": "done."},
        {"type": "text-end", "id": "text-5"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


def test_a_failed_tool_a_stop_and_text_that_was_never_streamed() -> None:
    failed = ("tool_result", {"id": "call_1", "name": "add_task", "error": "Task not found"})
    chunks = ai_sdk(events(TURN, CALL, failed, done("I stopped after 8 tool steps.", interrupted=True)))

    assert {"type": "tool-output-error", "toolCallId": "call_1", "errorText": "Task not found"} in chunks
    texts = [c for c in chunks if c["type"] == "text-delta"]
    assert [c["delta"] for c in texts] == ["I stopped after 8 tool steps."]
    assert [c["type"] for c in chunks].count("start-step") == 2
    assert chunks[-1] == {"type": "finish", "finishReason": "interrupted"}


def test_an_error_after_the_start_is_an_error_chunk_and_an_override_names_the_message() -> None:
    failure = ("error", {"status_code": 502, "detail": "The model provider is unavailable"})
    chunks = ai_sdk(events(TURN, ("delta", {"text": "Hel"}), failure), message_id="client-id")

    assert chunks[0]["messageId"] == "client-id"
    assert chunks[-2:] == [
        {"type": "text-end", "id": "text-2"},
        {"type": "error", "errorText": "The model provider is unavailable"},
    ]


def test_a_call_awaiting_approval_is_an_approval_request_and_the_reply_finishes_for_tool_calls() -> None:
    pending = ("approval_request", {"id": "call_2", "name": "delete_task", "arguments": {"task_id": 1}})
    chunks = ai_sdk(events(TURN, CALL, RESULT, pending, done("", status="awaiting_approval")))

    kinds = [c["type"] for c in chunks]
    assert kinds[-6:] == [
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-approval-request",
        "finish-step",
        "finish",
    ]
    assert {"type": "tool-approval-request", "approvalId": "call_2", "toolCallId": "call_2"} in chunks
    assert chunks[-1] == {"type": "finish", "finishReason": "tool-calls"}


def ag_ui(turn_events: list[TurnEvent]) -> list[dict[str, JsonValue]]:
    renderer = AgUiEventStream(thread_id="thread-1", run_id="run-1")
    return [event for turn_event in turn_events for event in renderer.render(turn_event)]


def test_ag_ui_events_of_a_turn_with_a_tool_call() -> None:
    rendered = ag_ui(
        events(TURN, ("delta", {"text": "Sure, "}), CALL, RESULT, ("delta", {"text": "done."}), done("done."))
    )

    first, second = f"{TURN_ID}:1", f"{TURN_ID}:2"
    assert rendered == [
        {"type": "RUN_STARTED", "threadId": "thread-1", "runId": "run-1"},
        {"type": "TEXT_MESSAGE_START", "messageId": first, "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": first, "delta": "Sure, "},
        {"type": "TEXT_MESSAGE_END", "messageId": first},
        {"type": "TOOL_CALL_START", "toolCallId": "call_1", "toolCallName": "add_task", "parentMessageId": first},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "call_1", "delta": '{"title": "Buy milk"}'},
        {"type": "TOOL_CALL_END", "toolCallId": "call_1"},
        {
            "type": "TOOL_CALL_RESULT",
            "messageId": "call_1:result",
            "toolCallId": "call_1",
            "content": '{"task_id": 1}',
            "role": "tool",
        },
        {"type": "TEXT_MESSAGE_START", "messageId": second, "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": second, "delta": "done."},
        {"type": "TEXT_MESSAGE_END", "messageId": second},
        {
            "type": "RUN_FINISHED",
            "threadId": "thread-1",
            "runId": "run-1",
            "result": {"conversationId": CONVERSATION_ID, "messageId": REPLY_ID, "response": "done."},
            "outcome": {"type": "success"},
        },
    ]


def test_ag_ui_interrupts_stops_and_errors() -> None:
    pending = ("approval_request", {"id": "call_2", "name": "delete_task", "arguments": {"task_id": 1}})
    interrupted = ag_ui(events(TURN, pending, done("", status="awaiting_approval")))
    stopped = ag_ui(events(TURN, ("delta", {"text": "Hel"}), done("Hel", interrupted=True)))
    failed = ag_ui(events(TURN, ("error", {"status_code": 504, "detail": "The model provider timed out"})))

    outcome = interrupted[-1]["outcome"]
    assert isinstance(outcome, dict)
    assert outcome["type"] == "interrupt"
    [interrupt] = outcome["interrupts"]
    assert (interrupt["id"], interrupt["toolCallId"], interrupt["reason"]) == ("call_2", "call_2", "tool_approval")
    assert [e["type"] for e in interrupted[1:4]] == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]
    assert stopped[-1]["outcome"] == {"type": "cancelled"}
    assert failed[-1] == {"type": "RUN_ERROR", "message": "The model provider timed out", "code": "504"}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_the_ai_sdk_request_reads_only_the_last_message() -> None:
    submitted = parse_chat_request(
        body(
            {
                "id": "chat",
                "trigger": "submit-message",
                "messages": [
                    {"id": "1", "role": "user", "parts": [{"type": "text", "text": "old"}]},
                    {
                        "id": "2",
                        "role": "user",
                        "parts": [{"type": "text", "text": "new"}, {"type": "text", "text": "!"}],
                    },
                ],
                "extra": {"anything": [1, 2]},
            }
        )
    )
    regenerate = parse_chat_request(body({"id": "chat", "messages": [], "trigger": "regenerate-message"}))
    approvals = parse_chat_request(
        body(
            {
                "id": "chat",
                "messages": [
                    {
                        "id": "reply",
                        "role": "assistant",
                        "parts": [
                            {"type": "step-start"},
                            {
                                "type": "tool-delete_task",
                                "toolCallId": "call_2",
                                "state": "approval-responded",
                                "input": {"task_id": 99},
                                "approval": {"id": "call_2", "approved": False, "reason": "no"},
                            },
                            {"type": "tool-list_tasks", "toolCallId": "call_1", "state": "output-available"},
                        ],
                    }
                ],
            }
        )
    )

    assert (submitted.chat_id, submitted.trigger, submitted.text) == ("chat", Trigger.SUBMIT, "new\n!")
    assert (regenerate.trigger, regenerate.text) == (Trigger.REGENERATE, None)
    assert approvals.approvals == (ToolDecision("call_2", approved=False, reason="no"),)
    assert approvals.message_id == "reply"


@pytest.mark.parametrize(
    "value",
    [
        {"id": "c", "messages": [{"role": "system", "parts": [{"type": "text", "text": "x"}]}]},
        {"id": "c", "messages": [{"role": "user", "parts": []}]},
        {"id": "x" * 256, "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]},
        {"id": "a\nb", "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]},
    ],
)
def test_bad_ai_sdk_requests_are_refused(value: Any) -> None:
    with pytest.raises((InvalidRequest, InvalidMessage)):
        parse_chat_request(body(value))


def test_the_ag_ui_input_reads_the_last_user_message_or_the_resume_entries() -> None:
    text = parse_run_input(
        body(
            {
                "threadId": "t",
                "runId": "r",
                "messages": [{"id": "1", "role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "tools": [{"name": "frontend_tool", "description": "ignored"}],
                "state": {"x": 1},
            }
        )
    )
    resumed = parse_run_input(
        body(
            {
                "threadId": "t",
                "runId": "r2",
                "messages": [],
                "resume": [
                    {"interruptId": "call_1", "status": "resolved", "payload": {"approved": True}},
                    {"interruptId": "call_2", "status": "cancelled"},
                    {"interruptId": "call_3", "status": "resolved", "payload": {"approved": False, "reason": "no"}},
                ],
            }
        )
    )

    assert (text.thread_id, text.run_id, text.text) == ("t", "r", "hi")
    assert resumed.approvals == (
        ToolDecision("call_1", approved=True),
        ToolDecision("call_2", approved=False),
        ToolDecision("call_3", approved=False, reason="no"),
    )
    with pytest.raises(InvalidRequest):
        parse_run_input(
            body({"threadId": "t", "runId": "r", "messages": [], "resume": [{"interruptId": "c", "status": "x"}]})
        )
    with pytest.raises(InvalidRequest):
        parse_run_input(body({"threadId": "t", "runId": "r", "messages": [{"id": "1", "role": "assistant"}]}))
