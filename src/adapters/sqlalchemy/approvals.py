"""``tool_approvals`` rows for SqlAlchemyConversationStore: pending calls, decisions, and approved calls started.

A row is a call that needed the user's approval, keyed by the assistant message that asked for it and the
call's id. ``approved`` is NULL while the call is pending; a decision sets it (with ``reason`` and
``decided_at``) only on a pending row, so two replicas deciding at once cannot both change it: the rows
are read ``FOR UPDATE`` first, and the second decision finds the first one's outcome. ``started_at`` is
set, under the conversation's lease, just before an approved call runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, true, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from chatcore.adapters.sqlalchemy.tables import conversations as conversations_table
from chatcore.adapters.sqlalchemy.tables import tool_approvals
from chatcore.approvals import EXPIRED, already_decided
from chatcore.errors import DecisionConflict, ToolCallNotFound
from chatcore.model import ToolApproval, ToolDecision

_A = tool_approvals.c
_COLUMNS = tuple(tool_approvals.c)
_ORDER = (_A.requested_at, _A.tool_call_id)
_PREFIX = "a_"


async def insert_pending(
    connection: AsyncConnection,
    user_id: str,
    conversation_id: uuid.UUID,
    turn_id: uuid.UUID,
    approvals: Sequence[ToolApproval],
    *,
    now: datetime,
) -> None:
    rows = [
        {
            "message_id": a.message_id,
            "tool_call_id": a.tool_call_id,
            "conversation_id": conversation_id,
            "user_id": user_id,
            "turn_id": turn_id,
            "name": a.name,
            "arguments": dict(a.arguments),
            "requested_at": now,
            "approved": None,
            "reason": None,
            "decided_at": None,
            "started_at": None,
        }
        for a in approvals
    ]
    await connection.execute(tool_approvals.insert(), rows)


async def of_turn(
    connection: AsyncConnection, conversation_id: uuid.UUID, turn_id: uuid.UUID
) -> tuple[ToolApproval, ...]:
    statement = select(*_COLUMNS).where(_A.conversation_id == conversation_id, _A.turn_id == turn_id).order_by(*_ORDER)
    return tuple(_approval(row._mapping) for row in (await connection.execute(statement)).all())


async def of_conversation(
    connection: AsyncConnection,
    user_id: str,
    conversation_id: uuid.UUID,
    message_ids: Sequence[uuid.UUID] | None,
) -> tuple[ToolApproval, ...] | None:
    """The conversation's approvals (of ``message_ids`` when given), oldest first; None when it is not the user's.

    One statement: the conversation row (the ownership check) left-joined to its approvals.
    """
    conditions = [_A.conversation_id == conversation_id]
    if message_ids is not None:
        conditions.append(_A.message_id.in_(list(message_ids)))
    found = select(*_COLUMNS).where(*conditions).subquery("found")
    statement = (
        select(
            conversations_table.c.id.label("conversation"), *(found.c[c.name].label(_PREFIX + c.name) for c in _COLUMNS)
        )
        .select_from(conversations_table.outerjoin(found, true()))
        .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
        .order_by(found.c.requested_at, found.c.tool_call_id)
    )
    rows = (await connection.execute(statement)).all()
    if not rows:
        return None
    return tuple(_approval(r._mapping, _PREFIX) for r in rows if r._mapping[_PREFIX + "message_id"] is not None)


async def deny_pending(
    connection: AsyncConnection,
    conversation_id: uuid.UUID,
    reason: str,
    *,
    now: datetime,
    before: datetime | None,
    user_id: str | None = None,
) -> None:
    """One UPDATE: the conversation's pending calls denied (those requested before ``before``, when given), only
    the user's when ``user_id`` is given."""
    conditions = [_A.conversation_id == conversation_id, _A.approved.is_(None)]
    if user_id is not None:
        conditions.append(_A.user_id == user_id)
    if before is not None:
        conditions.append(_A.requested_at < before)
    await connection.execute(
        update(tool_approvals).where(*conditions).values(approved=False, reason=reason, decided_at=now)
    )


async def decide(
    connection: AsyncConnection,
    conversation_id: uuid.UUID,
    decisions: Sequence[ToolDecision],
    *,
    now: datetime,
    expire_before: datetime,
) -> tuple[ToolApproval, ...]:
    """Expire, then decide, in the caller's transaction (see ``ToolApprovalStore.decide_tool_calls``)."""
    await deny_pending(connection, conversation_id, EXPIRED, now=now, before=expire_before)
    named = (
        select(*_COLUMNS)
        .where(_A.conversation_id == conversation_id, _A.tool_call_id.in_([d.tool_call_id for d in decisions]))
        .order_by(*_ORDER)
        .with_for_update()
    )
    latest = {row.tool_call_id: _approval(row._mapping) for row in (await connection.execute(named)).all()}
    found = [latest.get(d.tool_call_id) for d in decisions]
    approvals = [a for a in found if a is not None]
    if len(approvals) != len(found):
        raise ToolCallNotFound()
    if len({a.turn_id for a in approvals}) > 1:
        raise DecisionConflict("The decisions name tool calls of different turns")
    for decision, approval in zip(decisions, approvals, strict=True):
        if not approval.pending and approval.approved is not decision.approved:
            raise DecisionConflict(already_decided(approval))
    for decision, approval in zip(decisions, approvals, strict=True):
        if approval.pending:
            await connection.execute(
                update(tool_approvals)
                .where(_key(approval.message_id, approval.tool_call_id), _A.approved.is_(None))
                .values(approved=decision.approved, reason=decision.reason, decided_at=now)
            )
    return await of_turn(connection, conversation_id, approvals[0].turn_id)


async def start(
    connection: AsyncConnection, conversation_id: uuid.UUID, calls: Sequence[tuple[uuid.UUID, str]], *, now: datetime
) -> tuple[tuple[uuid.UUID, str], ...]:
    """Mark approved, not yet started calls started; the keys of those it marked."""
    statement = (
        update(tool_approvals)
        .where(
            _A.conversation_id == conversation_id,
            or_(*(_key(message_id, call_id) for message_id, call_id in calls)),
            _A.approved.is_(True),
            _A.started_at.is_(None),
        )
        .values(started_at=now)
        .returning(_A.message_id, _A.tool_call_id)
    )
    return tuple((row.message_id, row.tool_call_id) for row in (await connection.execute(statement)).all())


def _key(message_id: uuid.UUID, tool_call_id: str) -> Any:
    return and_(_A.message_id == message_id, _A.tool_call_id == tool_call_id)


def _approval(row: RowMapping, prefix: str = "") -> ToolApproval:
    return ToolApproval(
        tool_call_id=row[prefix + "tool_call_id"],
        name=row[prefix + "name"],
        arguments=row[prefix + "arguments"] or {},
        conversation_id=row[prefix + "conversation_id"],
        turn_id=row[prefix + "turn_id"],
        message_id=row[prefix + "message_id"],
        requested_at=row[prefix + "requested_at"],
        approved=row[prefix + "approved"],
        reason=row[prefix + "reason"],
        decided_at=row[prefix + "decided_at"],
        started_at=row[prefix + "started_at"],
    )
