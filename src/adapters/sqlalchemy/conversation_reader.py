"""SqlAlchemyConversationReader: the history API's reads of conversations and messages, in PostgreSQL or SQLite.

Each read is one statement on a plain connection; the writes are ``conversation_store.py``'s.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Uuid, func, literal, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.rows import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    conversation_from_row,
    message_from_row,
)
from chatcore.adapters.sqlalchemy.tables import as_utc
from chatcore.adapters.sqlalchemy.tables import conversations as conversations_table
from chatcore.adapters.sqlalchemy.tables import messages as messages_table
from chatcore.adapters.sqlalchemy.tables import tool_approvals as approvals_table
from chatcore.errors import ConversationNotFound
from chatcore.model import PREVIEW_LENGTH, Conversation, ConversationSummary, Message, Role

_PREFIX = "m_"
"""Message columns are labelled ``m_<column>`` beside the conversation's id."""


class SqlAlchemyConversationReader:
    """A ``chatcore.ports.ConversationReader`` on an AsyncEngine from ``engine.create_engine``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            found = (
                await connection.execute(
                    select(*CONVERSATION_COLUMNS).where(
                        conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id
                    )
                )
            ).one_or_none()
        if found is None:
            raise ConversationNotFound()
        return conversation_from_row(found)

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[datetime, uuid.UUID] | None = None
    ) -> tuple[ConversationSummary, ...]:
        """One statement: a backward scan of (user_id, updated_at DESC), each row with its preview subquery."""
        if limit <= 0:
            return ()
        preview = (
            select(func.substr(messages_table.c.content, 1, PREVIEW_LENGTH))
            .where(
                messages_table.c.conversation_id == conversations_table.c.id,
                messages_table.c.role.in_((Role.USER.value, Role.ASSISTANT.value)),
                messages_table.c.content != "",
            )
            .order_by(messages_table.c.seq.desc())
            .limit(1)
            .correlate(conversations_table)
            .scalar_subquery()
        )
        awaiting = (
            select(approvals_table.c.message_id)
            .where(approvals_table.c.conversation_id == conversations_table.c.id, approvals_table.c.approved.is_(None))
            .correlate(conversations_table)
            .exists()
        )
        statement = (
            select(*CONVERSATION_COLUMNS, preview.label("preview"), awaiting.label("awaiting_approval"))
            .where(conversations_table.c.user_id == user_id)
            .order_by(conversations_table.c.updated_at.desc(), conversations_table.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            keyset = tuple_(
                literal(as_utc(before[0]), conversations_table.c.updated_at.type), literal(before[1], Uuid())
            )
            statement = statement.where(tuple_(conversations_table.c.updated_at, conversations_table.c.id) < keyset)
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return tuple(
            ConversationSummary(
                id=row.id,
                title=row.title,
                created_at=row.created_at,
                updated_at=row.updated_at,
                preview=row.preview,
                awaiting_approval=bool(row.awaiting_approval),
            )
            for row in rows
        )

    async def list_messages(
        self, user_id: str, conversation_id: uuid.UUID, *, limit: int, after_seq: int = 0
    ) -> tuple[Message, ...]:
        """One statement: the conversation row (the ownership check) left-joined to a forward scan of the unique index.

        The page filters by the bound id rather than correlating, so no LATERAL is needed and the statement
        runs on SQLite too.
        """
        page = (
            select(*MESSAGE_COLUMNS)
            .where(messages_table.c.conversation_id == conversation_id, messages_table.c.seq > after_seq)
            .order_by(messages_table.c.seq)
            .limit(max(limit, 0))
            .subquery("page")
        )
        statement = (
            select(
                conversations_table.c.id.label("conversation"),
                *(page.c[c.name].label(_PREFIX + c.name) for c in MESSAGE_COLUMNS),
            )
            .select_from(conversations_table.outerjoin(page, true()))
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            raise ConversationNotFound()
        found = [message_from_row(r._mapping, prefix=_PREFIX) for r in rows if r._mapping["m_id"] is not None]
        return tuple(sorted(found, key=lambda m: m.seq))
