"""Request and response bodies of the HTTP API, with the examples shown in the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from chatcore.model import (
    MAX_DECISIONS,
    MAX_MESSAGE_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TOOL_CALL_ID_LENGTH,
    BusyPolicy,
    ChatReply,
    ToolApproval,
    ToolCall,
    ToolCallRecord,
    ToolDecision,
)
from chatcore.service import parse_if_busy
from chatcore.usage import UsageTotals


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
    if_busy: Annotated[
        str | None,
        msgspec.Meta(
            description="What to do while another turn runs on the conversation: `wait` for it (then run), `reject` "
            "(409 at once, with Retry-After), or `interrupt` it (stopped wherever it runs, its partial reply kept as "
            "interrupted; this turn runs right after it and sees it). Default: CHATCORE_BUSY_POLICY (`wait`).",
            examples=["interrupt"],
        ),
    ] = None

    def busy_policy(self) -> BusyPolicy | None:
        """``if_busy`` as a policy (None: the server's default); InvalidRequest for another value."""
        return parse_if_busy(self.if_busy)


class ApprovalOut(msgspec.Struct):
    """The approval a call needed: pending, or the decision with its reason (the user's, expired, or superseded)."""

    status: Annotated[str, msgspec.Meta(description="pending, approved or denied.")]
    reason: str | None
    requested_at: datetime
    decided_at: datetime | None

    @classmethod
    def from_approval(cls, approval: ToolApproval) -> ApprovalOut:
        status = "pending" if approval.pending else "approved" if approval.approved else "denied"
        return cls(status, approval.reason, approval.requested_at, approval.decided_at)


class ToolCallOut(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    arguments: dict[str, Any]
    result: Any
    error: str | None = None
    status: Annotated[
        str,
        msgspec.Meta(description="awaiting_approval while the call waits for the user's decision (shown when so)."),
    ] = "complete"
    approval: Annotated[
        ApprovalOut | None, msgspec.Meta(description="Only for calls of tools that need the user's approval.")
    ] = None

    @classmethod
    def from_record(cls, record: ToolCallRecord) -> ToolCallOut:
        return cls(
            id=record.id,
            name=record.name,
            arguments=dict(record.arguments),
            result=record.result,
            error=record.error,
            status="awaiting_approval" if record.awaiting_approval else "complete",
            approval=None if record.approval is None else ApprovalOut.from_approval(record.approval),
        )


class PendingApprovalOut(msgspec.Struct):
    """A tool call waiting for the user's decision; approve or deny it at ``POST .../approvals``."""

    id: Annotated[str, msgspec.Meta(description="The tool call's id: send it back as `tool_call_id`.")]
    name: str
    arguments: Annotated[dict[str, Any], msgspec.Meta(description="What the call will run with if approved.")]

    @classmethod
    def from_call(cls, call: ToolCall) -> PendingApprovalOut:
        return cls(call.id, call.name, dict(call.arguments))


class TurnUsageOut(msgspec.Struct):
    """What the model calls of this request cost, as the providers reported it."""

    input_tokens: Annotated[int, msgspec.Meta(description="All input tokens, cached ones included.")]
    output_tokens: int
    cached_tokens: Annotated[int, msgspec.Meta(description="Input tokens read from the provider's prompt cache.")]
    model_calls: int
    cost_usd: Annotated[
        float | None, msgspec.Meta(description="In USD, from CHATCORE_PRICES; null when a model has no price.")
    ]

    @classmethod
    def from_totals(cls, totals: UsageTotals | None) -> TurnUsageOut:
        totals = totals or UsageTotals()
        return cls(
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cached_tokens=totals.cached_tokens,
            model_calls=totals.model_calls,
            cost_usd=None if totals.cost_usd is None else float(totals.cost_usd),
        )


class ChatResponse(msgspec.Struct):
    conversation_id: uuid.UUID
    message_id: Annotated[
        uuid.UUID,
        msgspec.Meta(
            description="The final assistant message (while calls await approval: the message that asked for them)."
        ),
    ]
    response: str
    tool_calls: list[ToolCallOut]
    status: Annotated[
        str,
        msgspec.Meta(
            description="complete; awaiting_approval (see pending_approvals); interrupted (stopped, or closed by a "
            "new message before it could go on)."
        ),
    ]
    pending_approvals: Annotated[
        list[PendingApprovalOut], msgspec.Meta(description="Tool calls waiting for the user's decision; [] when none.")
    ]
    usage: Annotated[
        TurnUsageOut,
        msgspec.Meta(description="Tokens and cost of the model calls this request made (zero when it made none)."),
    ]

    @classmethod
    def from_reply(cls, reply: ChatReply) -> ChatResponse:
        return cls(
            conversation_id=reply.conversation_id,
            message_id=reply.message_id,
            response=reply.response,
            tool_calls=[ToolCallOut.from_record(c) for c in reply.tool_calls],
            status=reply.status.value,
            pending_approvals=[PendingApprovalOut.from_call(c) for c in reply.pending_approvals],
            usage=TurnUsageOut.from_totals(reply.usage),
        )


class DecisionIn(msgspec.Struct, kw_only=True):
    tool_call_id: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=MAX_TOOL_CALL_ID_LENGTH, description="A pending call's `id`."),
    ]
    approved: Annotated[bool, msgspec.Meta(description="true runs the call; false gives the model a denial.")]
    reason: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=MAX_REASON_LENGTH, description="Optional; a denial's reason is shown to the model."
            ),
        ]
        | None
    ) = None

    def to_decision(self) -> ToolDecision:
        return ToolDecision(self.tool_call_id, self.approved, self.reason)


class ApprovalsRequest(msgspec.Struct, kw_only=True):
    decisions: Annotated[list[DecisionIn], msgspec.Meta(min_length=1, max_length=MAX_DECISIONS)]


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
    "status": "complete",
    "pending_approvals": [],
    "usage": {"input_tokens": 1240, "output_tokens": 38, "cached_tokens": 1024, "model_calls": 2, "cost_usd": 0.000132},
}
AWAITING_RESPONSE_EXAMPLE: dict[str, Any] = {
    "conversation_id": "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11",
    "message_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "response": "",
    "tool_calls": [
        {
            "id": "call_1",
            "name": "list_tasks",
            "arguments": {"status": "all"},
            "result": [{"id": 3, "title": "Team meeting", "description": None, "completed": False}],
        }
    ],
    "status": "awaiting_approval",
    "pending_approvals": [{"id": "call_2", "name": "delete_task", "arguments": {"task_id": 3}}],
    "usage": {"input_tokens": 1190, "output_tokens": 41, "cached_tokens": 0, "model_calls": 2, "cost_usd": 0.0002031},
}
APPROVALS_REQUEST_EXAMPLE = {"decisions": [{"tool_call_id": "call_2", "approved": True}]}
DENIAL_REQUEST_EXAMPLE = {"decisions": [{"tool_call_id": "call_2", "approved": False, "reason": "I still need it"}]}
APPROVED_RESPONSE_EXAMPLE = {
    "conversation_id": "7b0c1a52-9d3e-4f7a-8f8e-2d7c1f0e9a11",
    "message_id": "4d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a",
    "response": "I've deleted 'Team meeting' (task 3).",
    "tool_calls": [
        AWAITING_RESPONSE_EXAMPLE["tool_calls"][0],
        {
            "id": "call_2",
            "name": "delete_task",
            "arguments": {"task_id": 3},
            "result": {"task_id": 3, "status": "deleted", "title": "Team meeting"},
            "approval": {
                "status": "approved",
                "reason": None,
                "requested_at": "2025-03-01T09:30:01Z",
                "decided_at": "2025-03-01T09:30:09Z",
            },
        },
    ],
    "status": "complete",
    "pending_approvals": [],
    "usage": {"input_tokens": 702, "output_tokens": 14, "cached_tokens": 0, "model_calls": 1, "cost_usd": 0.0001137},
}


def error_spec(description: str, detail: str, status: int) -> ResponseSpec:
    """An OpenAPI response of the one error body every endpoint uses, with an example."""
    return ResponseSpec(
        data_container=ErrorBody,
        description=description,
        examples=[Example(summary=description, value={"status_code": status, "detail": detail})],
    )
