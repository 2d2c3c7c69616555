"""The conversation ports of one backend, built together over one database, and the reads only tests make.

``ConversationStore``, ``TurnClaimStore``, ``ConversationReader``, ``TurnEventStore`` and ``RetentionStore`` share
their data (as the SQL adapters share tables), so a test builds them together: ``in_memory()`` or ``on_engine(engine)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.alias_store import SqlAlchemyConversationAliases
from chatcore.adapters.sqlalchemy.conversation_reader import SqlAlchemyConversationReader
from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
from chatcore.adapters.sqlalchemy.retention_store import SqlAlchemyRetentionStore
from chatcore.adapters.sqlalchemy.turn_claim_store import SqlAlchemyTurnClaimStore
from chatcore.adapters.sqlalchemy.turn_event_store import SqlAlchemyTurnEventStore
from chatcore.adapters.sqlalchemy.usage_store import SqlAlchemyUsageStore
from chatcore.errors import ConversationNotFound
from chatcore.fakes import (
    InMemoryChatDatabase,
    InMemoryConversationAliases,
    InMemoryConversationReader,
    InMemoryConversationStore,
    InMemoryRetentionStore,
    InMemoryTurnClaimStore,
    InMemoryTurnEventStore,
    InMemoryUsageStore,
)
from chatcore.model import Conversation, Message, utcnow
from chatcore.ports import (
    ConversationAliases,
    ConversationReader,
    ConversationStore,
    RetentionStore,
    TurnClaimStore,
    TurnEventStore,
    UsageStore,
)

ALL_MESSAGES = 1_000_000


@dataclass(frozen=True)
class ConversationStores:
    """The conversation ports of one backend, over one database."""

    store: ConversationStore
    claims: TurnClaimStore
    reader: ConversationReader
    events: TurnEventStore
    retention: RetentionStore
    aliases: ConversationAliases
    usage: UsageStore


def in_memory(*, clock: Callable[[], datetime] = utcnow) -> ConversationStores:
    database = InMemoryChatDatabase(clock=clock)
    events = InMemoryTurnEventStore(database)
    return ConversationStores(
        InMemoryConversationStore(database),
        InMemoryTurnClaimStore(database),
        InMemoryConversationReader(database),
        events,
        InMemoryRetentionStore(database, events),
        InMemoryConversationAliases(database),
        InMemoryUsageStore(database),
    )


def on_engine(
    engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow, asyncpg_statements: bool = True
) -> ConversationStores:
    return ConversationStores(
        SqlAlchemyConversationStore(engine, clock=clock, asyncpg_statements=asyncpg_statements),
        SqlAlchemyTurnClaimStore(engine, clock=clock),
        SqlAlchemyConversationReader(engine),
        SqlAlchemyTurnEventStore(engine, clock=clock),
        SqlAlchemyRetentionStore(engine, clock=clock),
        SqlAlchemyConversationAliases(engine, clock=clock),
        SqlAlchemyUsageStore(engine),
    )


async def stored_history(
    reader: ConversationReader, user_id: str, conversation_id: uuid.UUID, limit: int
) -> tuple[Message, ...]:
    """The last ``limit`` messages, oldest first. Raises ConversationNotFound, also for another user's."""
    messages = await reader.list_messages(user_id, conversation_id, limit=ALL_MESSAGES)
    return messages[-limit:] if limit > 0 else ()


async def stored_conversation(reader: ConversationReader, user_id: str, conversation_id: uuid.UUID) -> Conversation:
    """The user's conversation as stored. Raises ConversationNotFound, also when another user owns it."""
    for summary in await reader.list_conversations(user_id, limit=ALL_MESSAGES):
        if summary.id == conversation_id:
            return Conversation(summary.id, user_id, summary.title, summary.created_at, summary.updated_at)
    raise ConversationNotFound()


def reader_of(store: InMemoryConversationStore) -> InMemoryConversationReader:
    """The reader over an in-memory store's data."""
    return InMemoryConversationReader(store.database)


def claims_of(store: InMemoryConversationStore) -> InMemoryTurnClaimStore:
    """The claim store over an in-memory store's data."""
    return InMemoryTurnClaimStore(store.database)
