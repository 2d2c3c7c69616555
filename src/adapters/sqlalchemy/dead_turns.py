"""Dead turns closed: the one transaction behind ``TurnEventStore.close_dead`` and the janitor's sweep.

A turn whose server died leaves two things behind: its row in ``turns`` still ``running`` (so
followers would wait for events that never come), and the conversation's lease naming it until
it expires. Closing a conversation's dead turns ends each such log with an ``error`` event and
gives the expired lease back, the dead turn's user message marked unanswered. The conversation
row is locked first (``FOR UPDATE``), so two closers (a follower and the janitor) close a turn once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chatcore.adapters.sqlalchemy.tables import conversations, messages, turn_events, turns
from chatcore.model import JsonValue, MessageStatus, Role, TurnStatus
from chatcore.turn_events import DONE, ERROR

_C = conversations.c
_T = turns.c


async def close_dead(
    connection: AsyncConnection,
    user_id: str,
    conversation_id: uuid.UUID,
    *,
    now: datetime,
    quiet_before: datetime,
    error: Mapping[str, JsonValue],
) -> tuple[uuid.UUID, ...]:
    """``TurnEventStore.close_dead`` inside the caller's transaction."""
    found = (
        await connection.execute(
            select(_C.lease_owner, _C.lease_expires_at, _C.updated_at)
            .where(_C.id == conversation_id, _C.user_id == user_id)
            .with_for_update()
        )
    ).one_or_none()
    if found is None:
        return ()
    owner: str | None = found.lease_owner
    expired = owner is not None and (found.lease_expires_at is None or found.lease_expires_at <= now)
    running = (
        await connection.execute(
            select(_T.id).where(
                _T.conversation_id == conversation_id,
                _T.user_id == user_id,
                _T.status == TurnStatus.RUNNING.value,
                _T.created_at <= quiet_before,
            )
        )
    ).scalars()
    closed: list[uuid.UUID] = []
    for turn_id in list(running):
        # Its own lease expired; or another turn's lease (it could only be taken once this one's expired); or no
        # lease for long (the turn gave it back, then died before ending its log).
        dead = expired if owner == str(turn_id) else owner is not None or found.updated_at <= quiet_before
        if dead:
            await _end_log(connection, user_id, conversation_id, turn_id, now=now, error=error)
            closed.append(turn_id)
    if expired:
        assert owner is not None
        holder = _turn_id(owner)
        if holder is not None:
            await _mark_unanswered(connection, conversation_id, holder)
            if holder not in closed:
                closed.append(holder)
        await connection.execute(
            update(conversations)
            .where(_C.id == conversation_id, _C.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
    return tuple(closed)


async def candidates(
    connection: AsyncConnection, *, now: datetime, quiet_before: datetime, limit: int
) -> Sequence[tuple[str, uuid.UUID]]:
    """``(user_id, conversation_id)`` of conversations that may hold something dead (``close_dead`` decides)."""
    old_turns = select(_T.user_id, _T.conversation_id).where(
        _T.status == TurnStatus.RUNNING.value, _T.created_at <= quiet_before
    )
    expired_leases = select(_C.user_id, _C.id).where(
        _C.lease_owner.is_not(None), or_(_C.lease_expires_at.is_(None), _C.lease_expires_at <= now)
    )
    chosen = union(old_turns, expired_leases).subquery("chosen")
    rows = await connection.execute(select(chosen).limit(max(limit, 0)))
    return [(row[0], row[1]) for row in rows]


async def _end_log(
    connection: AsyncConnection,
    user_id: str,
    conversation_id: uuid.UUID,
    turn_id: uuid.UUID,
    *,
    now: datetime,
    error: Mapping[str, JsonValue],
) -> None:
    last = (
        await connection.execute(
            select(turn_events.c.seq, turn_events.c.type, turn_events.c.data)
            .where(turn_events.c.turn_id == turn_id)
            .order_by(turn_events.c.seq.desc())
            .limit(1)
        )
    ).one_or_none()
    status = TurnStatus.INTERRUPTED
    if last is not None and last.type == DONE:
        status = TurnStatus.INTERRUPTED if (last.data or {}).get("interrupted") else TurnStatus.COMPLETE
    elif last is not None and last.type == ERROR:
        status = TurnStatus.FAILED
    else:
        data: dict[str, Any] = {**error, "conversation_id": str(conversation_id)}
        await connection.execute(
            turn_events.insert().values(
                turn_id=turn_id,
                seq=(0 if last is None else last.seq) + 1,
                conversation_id=conversation_id,
                user_id=user_id,
                type=ERROR,
                data=data,
                created_at=now,
            )
        )
    await connection.execute(
        update(turns)
        .where(_T.id == turn_id, _T.status == TurnStatus.RUNNING.value)
        .values(status=status.value, updated_at=now)
    )


async def _mark_unanswered(connection: AsyncConnection, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> None:
    """The turn's user message marked unanswered, unless the turn has an answer."""
    rows = (
        await connection.execute(
            select(messages.c.role, messages.c.tool_calls, messages.c.status).where(
                messages.c.conversation_id == conversation_id, messages.c.turn_id == turn_id
            )
        )
    ).all()
    answered = any(
        row.role == Role.ASSISTANT.value and not row.tool_calls and row.status != MessageStatus.SUPERSEDED.value
        for row in rows
    )
    if answered:
        return
    await connection.execute(
        update(messages)
        .where(
            and_(
                messages.c.conversation_id == conversation_id,
                messages.c.turn_id == turn_id,
                messages.c.role == Role.USER.value,
                messages.c.status == MessageStatus.COMPLETE.value,
            )
        )
        .values(status=MessageStatus.UNANSWERED.value)
    )


def _turn_id(owner: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(owner)
    except ValueError:
        return None
