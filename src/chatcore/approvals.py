"""A human in the loop: which tool calls wait for the user's approval, and what a turn's calls end up paired with.

The server keeps every pending call (``ToolApproval`` rows in the store), so a decision can only
approve a call the server issued, once, for its owner, with the arguments the model gave. These
are the rules, without I/O: which calls need approval, what result a call gets when it is denied
or cut short, and how a turn's reply is read back from what it stored (so a second caller deciding
the same calls gets the very reply the first one got).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from chatcore.errors import InvalidRequest
from chatcore.history import INTERRUPTED_ERROR
from chatcore.idempotency import as_replayed
from chatcore.model import (
    MAX_DECISIONS,
    MAX_REASON_LENGTH,
    MAX_TOOL_CALL_ID_LENGTH,
    ChatMessage,
    ChatReply,
    MessageStatus,
    ReplyStatus,
    Role,
    ToolApproval,
    ToolCall,
    ToolCallRecord,
    ToolDecision,
    ToolResult,
    ToolSpec,
)

DENIED = "denied by the user"
"""A denied call's error result; the decision's reason follows it (``denied by the user: not now``)."""
SUPERSEDED = "superseded by a new message"
"""Why a call still pending when the user sent a new message was denied."""
EXPIRED = "expired"
"""Why a call pending for longer than the approval TTL was denied."""
NOT_RUN = "not run: a new message arrived before it could run"
"""The result of a call approved but not yet started when a new message closed its turn."""

ApprovalKey = tuple[uuid.UUID, str]
"""A stored approval's key: the assistant message that asked for the call, and the call's id."""


def needs_approval(call: ToolCall, specs: Mapping[str, ToolSpec], approval_tools: Collection[str]) -> bool:
    """Whether ``call`` must wait for the user: its tool says so, or the deployment's setting names it."""
    spec = specs.get(call.name)
    return call.name in approval_tools or (spec is not None and spec.requires_approval)


def validate_decisions(decisions: Iterable[ToolDecision]) -> tuple[ToolDecision, ...]:
    """The decisions as given, or InvalidRequest: 1 to MAX_DECISIONS, each call named once, reasons bounded."""
    checked = tuple(decisions)
    if not 1 <= len(checked) <= MAX_DECISIONS:
        raise InvalidRequest(f"decisions must hold 1 to {MAX_DECISIONS} decisions")
    seen: set[str] = set()
    for decision in checked:
        call_id = decision.tool_call_id
        if not isinstance(call_id, str) or not 1 <= len(call_id) <= MAX_TOOL_CALL_ID_LENGTH or "\x00" in call_id:
            raise InvalidRequest(f"tool_call_id must be 1 to {MAX_TOOL_CALL_ID_LENGTH} characters")
        if not isinstance(decision.approved, bool):
            raise InvalidRequest("approved must be true or false")
        if call_id in seen:
            raise InvalidRequest(f"tool call {call_id} is decided twice in one request")
        seen.add(call_id)
        reason = decision.reason
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH or "\x00" in reason):
            raise InvalidRequest(f"reason must be text of at most {MAX_REASON_LENGTH} characters")
    return checked


def denial(reason: str | None) -> ToolResult:
    """A denied call's result, as the model reads it."""
    reason = (reason or "").strip()
    return ToolResult(error=f"{DENIED}: {reason}" if reason else DENIED)


def already_decided(approval: ToolApproval) -> str:
    """DecisionConflict's detail: what was decided on the call before."""
    outcome = "approved" if approval.approved else "denied"
    reason = f" ({approval.reason})" if approval.reason and not approval.approved else ""
    return f"Tool call {approval.tool_call_id} was already {outcome}{reason}"


def approval_key(approval: ToolApproval) -> ApprovalKey:
    return approval.message_id, approval.tool_call_id


def unanswered_calls(turn: Sequence[ChatMessage]) -> list[tuple[ChatMessage, ToolCall]]:
    """The turn's calls that have no stored result yet, with the assistant message that asked for each."""
    answered = {m.tool_call_id for m in turn if m.role is Role.TOOL}
    return [(m, call) for m in turn if m.role is Role.ASSISTANT for call in m.tool_calls if call.id not in answered]


def closing_result(approval: ToolApproval | None, *, superseded: bool) -> ToolResult | None:
    """The result a call without one gets when its turn goes on (``superseded`` False) or is closed by a new message.

    None: the call is approved and not started, so a continuing turn runs it now. A call with no approval
    record, or started without a stored result, was running when its turn stopped: it may or may not have run.
    """
    if approval is None or approval.started_at is not None:
        return ToolResult(error=INTERRUPTED_ERROR)
    if approval.pending:
        return denial(SUPERSEDED) if superseded else None
    if not approval.approved:
        return denial(approval.reason)
    return ToolResult(error=NOT_RUN) if superseded else None


def tool_records(messages: Sequence[ChatMessage], approvals: Iterable[ToolApproval] = ()) -> list[ToolCallRecord]:
    """The assistant messages' calls in order, each with its stored result and approval, as the API reports them.

    A call waiting for approval has neither result nor error; any other call without a stored result was cut
    short and reads as interrupted (it may or may not have run).
    """
    by_call = {approval_key(a): a for a in approvals}
    results = {m.tool_call_id: m for m in messages if m.role is Role.TOOL and m.tool_call_id}
    records: list[ToolCallRecord] = []
    for message in messages:
        for call in message.tool_calls:
            approval = by_call.get((message.id, call.id))
            found = results.get(call.id)
            if found is not None:
                outcome = ToolResult.from_content(found.content, is_error=found.is_error)
            elif approval is not None and approval.pending:
                outcome = ToolResult()
            else:
                outcome = ToolResult(error=INTERRUPTED_ERROR)
            records.append(ToolCallRecord(call.id, call.name, call.arguments, outcome.result, outcome.error, approval))
    return records


def turn_reply(conversation_id: uuid.UUID, turn: Sequence[ChatMessage], approvals: Iterable[ToolApproval]) -> ChatReply:
    """A turn's reply read from what it stored (its messages in order, its approvals), as every caller gets it.

    ``message_id`` is the turn's last assistant message. The turn is complete (or interrupted, when that
    message is) once it ends with an answer, awaiting approval while a call is pending, and interrupted
    when it was closed without an answer (a new message arrived, or it stopped without one).
    """
    records = tool_records(turn, (replace(a, started_at=None) for a in approvals))  # the reply shows decisions
    pending = [ToolCall(r.id, r.name, r.arguments) for r in records if r.awaiting_approval]
    said = [m for m in turn if m.role is Role.ASSISTANT]
    last = said[-1] if said else turn[-1]
    if pending:
        status = ReplyStatus.AWAITING_APPROVAL
    elif last.role is Role.ASSISTANT and not last.tool_calls and turn[-1] is last:
        interrupted = getattr(last, "status", None) is MessageStatus.INTERRUPTED
        status = ReplyStatus.INTERRUPTED if interrupted else ReplyStatus.COMPLETE
    else:
        status = ReplyStatus.INTERRUPTED
    reply = ChatReply(
        conversation_id=conversation_id,
        message_id=last.id,
        response=last.content if last.role is Role.ASSISTANT else "",
        tool_calls=tuple(r for r in records if not r.awaiting_approval),
        status=status,
        pending_approvals=tuple(pending),
    )
    return as_replayed(reply)
