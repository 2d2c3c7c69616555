"""The schema, as SQLAlchemy Core tables: the single source the migrations are checked against.

It covers the whole roadmap (turn leases, idempotency keys, resumable turn events) so
that later features add code, not table rewrites.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint names, so a later migration can drop or alter a constraint by name on every dialect."""

metadata = MetaData(naming_convention=NAMING_CONVENTION)

TITLE_MAX_LENGTH = 200


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already, as everything in chatcore is."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect.

    PostgreSQL keeps the instant; SQLite stores text without an offset and reads back a
    naive value. Writing UTC and attaching UTC on read makes both return the same value.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def json_type() -> JSON:
    """JSON, stored as JSONB on PostgreSQL (indexable, compact); Python None is SQL NULL, not JSON 'null'."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


conversations = Table(
    "conversations",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("title", String(TITLE_MAX_LENGTH), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The highest message seq handed out: bumping it reserves seqs and row-locks the conversation.
    Column("last_seq", Integer(), nullable=False, server_default=text("0")),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    # The turn whose tool calls still lack results (awaiting approval, or decided but not yet continued): no new
    # turn begins until it is closed. NULL on the normal path, so beginning a turn checks it for free.
    Column("open_turn_id", Uuid(), nullable=True),
)
Index("ix_conversations_user_id_updated_at", conversations.c.user_id, conversations.c.updated_at.desc())

messages = Table(
    "messages",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer(), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text(), nullable=False),
    # A list of {id, name, arguments}; NULL when the message calls no tool.
    Column("tool_calls", json_type(), nullable=True),
    Column("tool_call_id", String(255), nullable=True),
    Column("is_error", Boolean(), nullable=False, server_default=false()),
    Column("status", String(16), nullable=False, server_default=text("'complete'")),
    Column("turn_id", Uuid(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # Orders a conversation and serves the history window (seq DESC LIMIT n) straight from the index.
    UniqueConstraint("conversation_id", "seq"),
)
Index("ix_messages_turn_id", messages.c.turn_id)

tasks = Table(
    "tasks",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(255), nullable=False),
    Column("title", String(500), nullable=False),
    Column("description", Text(), nullable=True),
    Column("completed", Boolean(), nullable=False, server_default=false()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_tasks_user_id_id", "user_id", "id"),
    # Never reuse a deleted task's id on SQLite: the model may still be talking about the old one.
    sqlite_autoincrement=True,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("response", json_type(), nullable=True),
    Column("conversation_id", Uuid(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    # The turn running the request while status is in_progress; only it may complete, renew or release the key.
    Column("turn_id", Uuid(), nullable=True),
    PrimaryKeyConstraint("user_id", "key"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

turn_events = Table(
    "turn_events",
    metadata,
    Column("turn_id", Uuid(), nullable=False),
    Column("seq", Integer(), nullable=False),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", String(255), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", json_type(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("turn_id", "seq"),
    Index("ix_turn_events_conversation_id", "conversation_id"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", String(255), nullable=False),
    # running | complete | failed | interrupted
    Column("status", String(16), nullable=False),
    # Set by a stop request on any replica; the replica running the turn polls it.
    Column("stop_requested_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_turns_conversation_id_status", "conversation_id", "status"),
    # The janitor finds turns that ended long enough ago by this (see retention_store.py).
    Index("ix_turns_updated_at", "updated_at"),
)
"""Streamed turns, so a stop or a resume reaching another replica finds the turn and its state."""

tool_approvals = Table(
    "tool_approvals",
    metadata,
    # The assistant message that asked for the call: a provider's call ids are unique only within it.
    Column("message_id", Uuid(), nullable=False),
    Column("tool_call_id", String(255), nullable=False),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", String(255), nullable=False),
    Column("turn_id", Uuid(), nullable=False),
    Column("name", String(255), nullable=False),
    Column("arguments", json_type(), nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    # NULL while pending; then the user's decision (or a denial: expired, superseded by a new message).
    Column("approved", Boolean(), nullable=True),
    Column("reason", Text(), nullable=True),
    Column("decided_at", UTCDateTime(), nullable=True),
    # Set, under the conversation's lease, just before an approved call runs: started without a result means
    # it may or may not have run, and it never runs again.
    Column("started_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("message_id", "tool_call_id"),
    Index("ix_tool_approvals_conversation_id_tool_call_id", "conversation_id", "tool_call_id"),
)
"""Tool calls that wait for (or got) the user's approval; their results are ordinary tool messages."""

usage = Table(
    "usage",
    metadata,
    Column("id", Uuid(), primary_key=True),
    # The turn the call belongs to: its rows are written with the turn's messages.
    Column("turn_id", Uuid(), nullable=False),
    Column("user_id", String(255), nullable=False),
    # No foreign key: usage outlives a deleted conversation (deleting one must not refund a budget).
    Column("conversation_id", Uuid(), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(255), nullable=True),
    Column("input_tokens", Integer(), nullable=False),
    Column("output_tokens", Integer(), nullable=False),
    Column("cached_read_tokens", Integer(), nullable=False),
    Column("cache_write_tokens", Integer(), nullable=False),
    # USD × 10^12, exact (chatcore.usage prices to the picodollar); NULL when the model has no price.
    Column("cost_picousd", BigInteger(), nullable=True),
    Column("latency_ms", Float(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    # Budgets sum a user's tokens since a window's start; on PostgreSQL from the index alone.
    Index(
        "ix_usage_user_id_started_at",
        "user_id",
        "started_at",
        postgresql_include=["input_tokens", "output_tokens"],
    ),
)
"""One row per model call (``chatcore.usage.ModelCall``), written in the transaction that stores its turn."""

conversation_aliases = Table(
    "conversation_aliases",
    metadata,
    Column("user_id", String(255), nullable=False),
    # A frontend's own chat id (the AI SDK's chat id, an AG-UI thread id), unique per user.
    Column("external_id", String(255), nullable=False),
    Column(
        "conversation_id",
        Uuid(),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("user_id", "external_id"),
    Index("ix_conversation_aliases_conversation_id", "conversation_id"),
)
"""Which conversation a frontend's chat id names for a user (``chatcore.external_chats``)."""
