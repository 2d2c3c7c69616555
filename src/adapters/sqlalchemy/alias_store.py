"""SqlAlchemyConversationAliases: frontend chat ids mapped per user to conversations, beside them in the database.

The mapping references its conversation with ON DELETE CASCADE: deleting the conversation forgets the id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import TITLE_MAX_LENGTH, conversation_aliases, conversations
from chatcore.model import utcnow


class SqlAlchemyConversationAliases:
    """A ``chatcore.ports.ConversationAliases`` on an AsyncEngine from ``engine.create_engine``."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    async def find(self, user_id: str, external_id: str) -> uuid.UUID | None:
        statement = select(conversation_aliases.c.conversation_id).where(
            conversation_aliases.c.user_id == user_id, conversation_aliases.c.external_id == external_id
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            found: uuid.UUID | None = await connection.scalar(statement)
        return found

    async def find_or_create(self, user_id: str, external_id: str, *, title: str | None) -> uuid.UUID:
        """The mapping's conversation; else a conversation and the mapping in one transaction. When a concurrent
        first use inserts the same mapping first, the primary key refuses ours, the transaction (our conversation
        with it) rolls back, and theirs is read."""
        found = await self.find(user_id, external_id)
        if found is not None:
            return found
        now, conversation_id = self._clock(), uuid.uuid4()
        try:
            async with store_unavailable_on_outage(), self._engine.begin() as connection:
                await connection.execute(
                    insert(conversations).values(
                        id=conversation_id,
                        user_id=user_id,
                        title=None if title is None else title[:TITLE_MAX_LENGTH],
                        created_at=now,
                        updated_at=now,
                        last_seq=0,
                    )
                )
                await connection.execute(
                    insert(conversation_aliases).values(
                        user_id=user_id, external_id=external_id, conversation_id=conversation_id, created_at=now
                    )
                )
        except IntegrityError:
            found = await self.find(user_id, external_id)
            if found is None:  # the other first use's conversation was deleted at once: try again
                return await self.find_or_create(user_id, external_id, title=title)
            return found
        return conversation_id
