"""SqlAlchemyTurnClaimStore: what a running turn holds, in PostgreSQL or SQLite: the conversation's lease (the
``lease_owner`` and ``lease_expires_at`` columns that ``begin_turn`` sets) and the request's Idempotency-Key row
(``idempotency.py``). The heartbeat renews both in one transaction; a failed turn gives both back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy import idempotency as keys
from chatcore.adapters.sqlalchemy import turn_statements as turn_sql
from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import conversations, idempotency_keys, messages
from chatcore.idempotency import IdempotencyRecord
from chatcore.model import AbandonedTurn, ChatReply, Role, utcnow


class SqlAlchemyTurnClaimStore:
    """A ``chatcore.ports.TurnClaimStore`` on an AsyncEngine from ``engine.create_engine``.

    ``clock`` judges expiry like the SqlAlchemyConversationStore's over the same database (give both the same).
    """

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    async def abandoned_turn(self, user_id: str, key: str) -> AbandonedTurn | None:
        """The key row and the turn's user message (by ``ix_messages_turn_id``) in one read."""
        k = idempotency_keys.c
        user_message = messages.alias("user_message")
        after = messages.alias("after")
        statement = (
            select(
                k.turn_id,
                user_message.c.conversation_id,
                ~exists(
                    select(after.c.id).where(
                        after.c.conversation_id == user_message.c.conversation_id,
                        after.c.seq > user_message.c.seq,
                        after.c.turn_id.is_distinct_from(k.turn_id),
                    )
                ).label("last"),
            )
            .select_from(idempotency_keys)
            .join(user_message, and_(user_message.c.turn_id == k.turn_id, user_message.c.role == Role.USER.value))
            .join(
                conversations,
                and_(conversations.c.id == user_message.c.conversation_id, conversations.c.user_id == k.user_id),
            )
            .where(
                k.user_id == user_id,
                k.key == key,
                k.status == keys.IN_PROGRESS,
                k.expires_at <= self._clock(),
            )
            .limit(1)
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
        return None if row is None else AbandonedTurn(row.turn_id, row.conversation_id, bool(row.last))

    async def renew_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
        lease_seconds: float,
    ) -> bool:
        until = self._clock() + timedelta(seconds=lease_seconds)
        held = True
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if conversation_id is not None:
                renewed = await connection.execute(
                    turn_sql.HELD_BY.values(lease_expires_at=until),
                    turn_sql.held_by_parameters(user_id, conversation_id, turn_id),
                )
                held = renewed.rowcount == 1
            if idempotency_key is not None:
                held = await keys.renew(connection, user_id, idempotency_key, turn_id=turn_id, until=until) and held
        return held

    async def release_turn(
        self,
        user_id: str,
        turn_id: uuid.UUID,
        *,
        conversation_id: uuid.UUID | None,
        idempotency_key: str | None,
    ) -> None:
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if conversation_id is not None:
                await connection.execute(
                    turn_sql.HELD_BY.values(lease_owner=None, lease_expires_at=None),
                    turn_sql.held_by_parameters(user_id, conversation_id, turn_id),
                )
            if idempotency_key is not None:
                await keys.release(connection, user_id, idempotency_key, turn_id=turn_id)

    async def idempotency_record(self, user_id: str, key: str) -> IdempotencyRecord | None:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            return await keys.read(connection, user_id, key, now=self._clock())

    async def claim_idempotency_key(
        self,
        user_id: str,
        key: str,
        request_hash: str,
        *,
        turn_id: uuid.UUID,
        hold_seconds: float,
    ) -> ChatReply | None:
        now = self._clock()
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            return await keys.claim(
                connection,
                user_id,
                key,
                request_hash,
                turn_id=turn_id,
                now=now,
                hold_until=now + timedelta(seconds=hold_seconds),
            )
