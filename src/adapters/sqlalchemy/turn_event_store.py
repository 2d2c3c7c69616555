"""SqlAlchemyTurnEventStore: streamed turns and their events, beside the messages in PostgreSQL or SQLite.

A turn row (``turns``) holds the status and the stop flag; its events (``turn_events``) are
numbered by the one writer of the turn. Both reference the conversation with ON DELETE
CASCADE, so deleting a conversation removes its turns and events too. Every statement
filters by ``user_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import msgspec
from sqlalchemy import insert, literal, select, true, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatcore.adapters.sqlalchemy import dead_turns
from chatcore.adapters.sqlalchemy import turn_event_statements as event_sql
from chatcore.adapters.sqlalchemy.asyncpg_statements import AutocommittedStatements
from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import conversations, turn_events, turns
from chatcore.errors import ConversationNotFound, TurnNotFound
from chatcore.model import JsonValue, TurnEvent, TurnState, TurnStatus, utcnow

_TURN_COLUMNS = event_sql.TURN_COLUMNS
_JSON = msgspec.json.Encoder()


def _json_text(data: object) -> str:
    return _JSON.encode(data).decode()


class SqlAlchemyTurnEventStore:
    """A ``chatcore.ports.TurnEventStore`` on an AsyncEngine from ``engine.create_engine``.

    On PostgreSQL with asyncpg a turn's writes (begin, append, end) are one statement each, run on asyncpg
    directly (``turn_event_statements.py``), and notify ``turn_notifications``' listeners; elsewhere they are
    a few statements in one transaction.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._asyncpg = (
            AutocommittedStatements(engine, (event_sql.BEGIN, event_sql.APPEND, event_sql.END))
            if self._postgres and engine.dialect.driver == "asyncpg"
            else None
        )

    async def _fetch(self, statement: Any, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """One of ``turn_event_statements``' statements, alone; a taken seq is the ValueError the port names."""
        try:
            async with store_unavailable_on_outage():
                assert self._asyncpg is not None
                return await self._asyncpg.rows(statement, parameters)
        except asyncpg.exceptions.UniqueViolationError as error:
            raise ValueError("duplicate event seq: nothing of this batch was stored") from error

    @staticmethod
    def _parameters(user_id: str, turn_id: uuid.UUID, events: Sequence[TurnEvent]) -> dict[str, Any]:
        if any(event.turn_id != turn_id for event in events):
            raise ValueError("events of another turn")
        last = max((event.seq for event in events), default=0)
        return {
            "p_user": user_id,
            "p_turn": turn_id,
            "p_now": utcnow(),
            "p_notice": event_sql.notice(turn_id, last),
            **event_sql.event_parameters(list(events), _json_text),
        }

    async def begin(
        self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID, events: Sequence[TurnEvent] = ()
    ) -> TurnState:
        """The turn row copied from the user's conversation row (no row to copy means not the user's), with its
        first events."""
        if self._asyncpg is not None:
            parameters = self._parameters(user_id, turn_id, events) | {"p_conversation": conversation_id}
            rows = await self._fetch(event_sql.BEGIN, parameters)
            if not rows:
                raise ConversationNotFound()
            return _state_from(rows[0])  # an asyncpg Record reads by column name too
        now = utcnow()
        statement = (
            insert(turns)
            .from_select(
                ["conversation_id", "id", "user_id", "status", "created_at", "updated_at"],
                select(
                    conversations.c.id,
                    literal(turn_id, turns.c.id.type),
                    literal(user_id, turns.c.user_id.type),
                    literal(TurnStatus.RUNNING.value, turns.c.status.type),
                    literal(now, turns.c.created_at.type),
                    literal(now, turns.c.updated_at.type),
                ).where(conversations.c.id == conversation_id, conversations.c.user_id == user_id),
            )
            .returning(*_TURN_COLUMNS)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            row = (await connection.execute(statement)).one_or_none()
            if row is None:
                raise ConversationNotFound()
            await _insert_events(connection, user_id, {turn_id: conversation_id}, events)
        return _state_from(row._mapping)

    async def append(self, user_id: str, events: Sequence[TurnEvent]) -> None:
        """One statement for the batch, its rows copied from the user's turn: another user's turn adds nothing."""
        if not events:
            return
        turn_ids = {event.turn_id for event in events}
        if self._asyncpg is not None and len(turn_ids) == 1:
            [turn_id] = turn_ids
            [(count, _)] = await self._fetch(event_sql.APPEND, self._parameters(user_id, turn_id, events))
            if count != len(events):
                raise TurnNotFound()
            return
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            owners = {
                row.id: row.conversation_id
                for row in await connection.execute(
                    select(turns.c.id, turns.c.conversation_id).where(
                        turns.c.id.in_(turn_ids), turns.c.user_id == user_id
                    )
                )
            }
            if set(owners) != turn_ids:
                raise TurnNotFound()
            await _insert_events(connection, user_id, owners, events)

    async def read(
        self, user_id: str, turn_id: uuid.UUID, *, after: int = 0, limit: int = 500
    ) -> tuple[TurnEvent, ...]:
        """The turn row (ownership) and its events in one statement; a forward scan of the primary key."""
        page = (
            select(turn_events.c.seq, turn_events.c.type, turn_events.c.data)
            .where(turn_events.c.turn_id == turn_id, turn_events.c.seq > after)
            .order_by(turn_events.c.seq)
            .limit(max(limit, 0))
            .subquery("page")
        )
        statement = (
            select(turns.c.id, page.c.seq, page.c.type, page.c.data)
            .select_from(turns.outerjoin(page, true()))
            .where(turns.c.id == turn_id, turns.c.user_id == user_id)
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            raise TurnNotFound()
        found = [TurnEvent(turn_id, row.seq, row.type, row.data) for row in rows if row.seq is not None]
        return tuple(sorted(found, key=lambda event: event.seq))

    async def state(self, user_id: str, turn_id: uuid.UUID) -> TurnState:
        statement = select(*_TURN_COLUMNS).where(turns.c.id == turn_id, turns.c.user_id == user_id)
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
        if row is None:
            raise TurnNotFound()
        return _state_from(row._mapping)

    async def end(self, user_id: str, turn_id: uuid.UUID, status: TurnStatus, events: Sequence[TurnEvent] = ()) -> None:
        if self._asyncpg is not None:
            parameters = self._parameters(user_id, turn_id, events) | {"p_status": status.value}
            [(count, _)] = await self._fetch(event_sql.END, parameters)
            if count == 0:
                raise TurnNotFound()
            return
        statement = (
            update(turns)
            .where(turns.c.id == turn_id, turns.c.user_id == user_id)
            .values(status=status.value, updated_at=utcnow())
            .returning(turns.c.conversation_id)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            conversation_id = (await connection.execute(statement)).scalar_one_or_none()
            if conversation_id is None:
                raise TurnNotFound()
            await _insert_events(connection, user_id, {turn_id: conversation_id}, events)

    async def request_stop(self, user_id: str, conversation_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        owned = select(conversations.c.id).where(
            conversations.c.id == conversation_id, conversations.c.user_id == user_id
        )
        mine = (turns.c.conversation_id == conversation_id) & (turns.c.user_id == user_id)
        statement: Any = (
            event_sql.stop_requests(mine)  # and a notification for each
            if self._postgres
            else update(turns)
            .where(mine, turns.c.status == TurnStatus.RUNNING.value)
            .values(stop_requested_at=event_sql.NOW)
            .returning(turns.c.id)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if (await connection.scalar(owned)) is None:
                raise ConversationNotFound()
            stopped = (await connection.execute(statement, {"p_now": utcnow()})).scalars().all()
        return tuple(stopped)

    async def close_dead(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        quiet_before: datetime,
        error: Mapping[str, JsonValue],
    ) -> tuple[uuid.UUID, ...]:
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            closed = await dead_turns.close_dead(
                connection, user_id, conversation_id, now=self._clock(), quiet_before=quiet_before, error=error
            )
        return closed

    async def running(self, user_id: str, conversation_id: uuid.UUID) -> TurnState | None:
        """The owner of the conversation's live lease, if it is a running turn: two primary-key reads."""
        holder = select(conversations.c.lease_owner).where(
            conversations.c.id == conversation_id,
            conversations.c.user_id == user_id,
            conversations.c.lease_expires_at > utcnow(),
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            owner = await connection.scalar(holder)
            try:
                turn_id = uuid.UUID(owner) if owner else None
            except ValueError:
                return None
            if turn_id is None:
                return None
            row = (
                await connection.execute(
                    select(*_TURN_COLUMNS).where(
                        turns.c.id == turn_id,
                        turns.c.user_id == user_id,
                        turns.c.status == TurnStatus.RUNNING.value,
                    )
                )
            ).one_or_none()
        return None if row is None else _state_from(row._mapping)


def _state_from(row: RowMapping | asyncpg.Record) -> TurnState:
    return TurnState(
        id=row["id"],
        conversation_id=row["conversation_id"],
        user_id=row["user_id"],
        status=TurnStatus(row["status"]),
        stop_requested=row["stop_requested_at"] is not None,
        created_at=row["created_at"],
    )


async def _insert_events(
    connection: AsyncConnection, user_id: str, owners: dict[uuid.UUID, uuid.UUID], events: Sequence[TurnEvent]
) -> None:
    """The events as rows of their turns (``owners``: turn id → conversation id), in the caller's transaction."""
    if not events:
        return
    now = utcnow()
    await connection.execute(
        insert(turn_events),
        [
            {
                "turn_id": event.turn_id,
                "seq": event.seq,
                "conversation_id": owners[event.turn_id],
                "user_id": user_id,
                "type": event.type,
                "data": dict(event.data),
                "created_at": now,
            }
            for event in events
        ],
    )
