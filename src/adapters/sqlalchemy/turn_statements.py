"""The PostgreSQL statements of a turn, built once: begin (create or continue a conversation) and finish.

Every chat turn runs them, so they are module-level constructs with named ``bindparam``s rather
than expressions rebuilt on each call. SQLAlchemy then memoizes each statement's cache key and
finds its compiled form in the engine's cache, so a turn only binds values; rebuilding the CTEs,
the lateral window and their column collections, and generating their cache keys, used to cost
more CPU than the rest of the store's work together.

Each statement is one round trip and atomic by itself, which is why ``SqlAlchemyConversationStore``
runs them on an autocommit connection (no BEGIN and COMMIT around them). Parameter names start with
``p_`` (or ``m_``/``batch_``): an UPDATE takes execution parameters named like one of its table's
columns as extra SET values, so none may be called ``user_id`` or ``title``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    Text,
    Update,
    Uuid,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.types import TypeEngine

from chatcore.adapters.sqlalchemy.rows import CONVERSATION_COLUMNS, MESSAGE_COLUMNS, calls_to_json, message_row
from chatcore.adapters.sqlalchemy.tables import UTCDateTime, conversations, messages, usage
from chatcore.adapters.sqlalchemy.usage_store import call_columns
from chatcore.model import Message
from chatcore.usage import ModelCall

_C = conversations.c
_M = messages.c

WINDOW: Final = len(CONVERSATION_COLUMNS)
"""Where a ``CONTINUE`` row holds its window: JSON text, an array of ``WINDOW_FIELDS`` objects; None when empty."""
WINDOW_FIELDS: Final[dict[str, ColumnElement[Any]]] = {c.name: c for c in MESSAGE_COLUMNS} | {
    "tool_calls": func.coalesce(_M.tool_calls, literal_column("'[]'::jsonb")),
}
"""A window message as a JSON object named like ``Message``'s fields, which msgspec decodes straight into ``Message``
(no tool calls as ``[]``, the empty tuple's JSON). Timestamps come as PostgreSQL writes ``timestamptz`` in JSON,
with the session's UTC offset: ``engine.create_engine`` sets the session time zone to UTC."""


def bump(
    *,
    take_lease: bool = False,
    release: bool = False,
    opens: bool = False,
    close: bool = False,
    require_closed: bool = False,
) -> Update:
    """Reserve ``p_by`` seqs of the user's conversation; matches no row when another user owns it or holds it.

    The one UPDATE that takes the conversation's lease for ``p_turn`` (``take_lease``, until ``p_until``), gives
    it back (``release``) or leaves it; it may make ``p_opens`` the conversation's open turn (``opens``) or close
    the open turn (``close``). It matches nothing while another turn's lease is live, nor, with
    ``require_closed``, while the conversation has an open turn. The prebuilt statements below embed it; the
    transactional path (SQLite, or a turn's write with more to do) runs it alone with ``bump_parameters``.
    """
    values: dict[str, Any] = {
        "last_seq": _C.last_seq + bindparam("p_by", type_=Integer()),
        "updated_at": bindparam("p_now", type_=_C.updated_at.type),
    }
    if take_lease:
        values.update(
            lease_owner=bindparam("p_owner", type_=_C.lease_owner.type),
            lease_expires_at=bindparam("p_until", type_=_C.lease_expires_at.type),
        )
    elif release:
        values.update(lease_owner=None, lease_expires_at=None)
    if opens:
        values["open_turn_id"] = bindparam("p_opens", type_=_C.open_turn_id.type)
    elif close:
        values["open_turn_id"] = None
    free = or_(
        _C.lease_owner.is_(None),
        _C.lease_owner == bindparam("p_turn", type_=_C.lease_owner.type),
        _C.lease_expires_at.is_(None),
        _C.lease_expires_at <= bindparam("p_now", type_=_C.lease_expires_at.type),
    )
    conditions = [
        _C.id == bindparam("p_conversation", type_=_C.id.type),
        _C.user_id == bindparam("p_user", type_=_C.user_id.type),
        free,
    ]
    if require_closed:
        conditions.append(_C.open_turn_id.is_(None))
    return update(conversations).where(*conditions).values(**values)


def _held_by() -> Update:
    """The user's conversation while ``p_turn`` holds its lease (even expired): the heartbeat renews it, a failed
    turn gives it back, an approved call is started under it, each by adding its SET values."""
    return update(conversations).where(
        _C.id == bindparam("p_conversation", type_=_C.id.type),
        _C.user_id == bindparam("p_user", type_=_C.user_id.type),
        _C.lease_owner == bindparam("p_turn", type_=_C.lease_owner.type),
    )


HELD_BY: Final = _held_by()


def held_by_parameters(user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> dict[str, Any]:
    return {"p_user": user_id, "p_conversation": conversation_id, "p_turn": str(turn_id)}


def _message_values() -> list[ColumnElement[Any]]:
    """The user message's columns as bound values ``m_<column>``, for INSERT ... SELECT."""
    return [bindparam(f"m_{c.name}", type_=c.type).label(c.name) for c in MESSAGE_COLUMNS]


def _continue(*, take_lease: bool) -> Select[Any]:
    """Bump by one, store the user message at the new seq, and read the window below it: one round trip, one row.

    The window comes back as one JSON array (``WINDOW``), an object of ``WINDOW_FIELDS`` per message
    (``json_agg`` of the rows themselves, cheaper for PostgreSQL than building each object), which msgspec
    decodes into ``Message`` objects in C: for 50 messages under half the client CPU of reading them as
    rows and building the messages from those (measured in docs/performance.md). The
    INSERT's CTE runs exactly once even though nothing reads it; every part of the statement reads the
    snapshot taken when it started (see ``SqlAlchemyConversationStore._continue_in_one_statement``).
    """
    bumped = bump(take_lease=take_lease, require_closed=True).returning(*CONVERSATION_COLUMNS).cte("bumped")
    values = [bumped.c.last_seq.label("seq") if value.name == "seq" else value for value in _message_values()]
    store = (
        insert(messages)
        .from_select([c.name for c in MESSAGE_COLUMNS], select(*values).select_from(bumped))
        .cte("store")
    )
    recent = (
        select(*(value.label(name) for name, value in WINDOW_FIELDS.items()))
        .where(_M.conversation_id == bumped.c.id, _M.seq < bumped.c.last_seq)
        .order_by(_M.seq.desc())
        .limit(bindparam("p_limit", type_=Integer()))
        .correlate(bumped)
        .subquery("recent")
    )
    window = (
        select(cast(func.json_agg(aggregate_order_by(recent.table_valued(), recent.c.seq)), Text()))
        .select_from(recent)
        .scalar_subquery()
        .label("window")
    )
    return select(*(_read(bumped.c[c.name]) for c in CONVERSATION_COLUMNS), window).add_cte(store)


def _read(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A column as ``CONTINUE`` reads it: timestamps as asyncpg returns them, already aware and in UTC.

    ``UTCDateTime`` attaches UTC for SQLite; on PostgreSQL its result processor would only copy them.
    """
    if isinstance(column.type, UTCDateTime):
        return type_coerce(column, DateTime(timezone=True)).label(column.name)
    return column


CONTINUE_TAKING_LEASE: Final = _continue(take_lease=True)
CONTINUE: Final = _continue(take_lease=False)


def _create() -> ReturningInsert[Any]:
    """The conversation and its first message; PostgreSQL checks the message's foreign key at the statement's end."""
    created = (
        insert(conversations)
        .values(
            id=bindparam("p_conversation", type_=_C.id.type),
            user_id=bindparam("p_user", type_=_C.user_id.type),
            title=bindparam("p_title", type_=_C.title.type),
            created_at=bindparam("p_now", type_=_C.created_at.type),
            updated_at=bindparam("p_now", type_=_C.updated_at.type),
            last_seq=1,
            lease_owner=bindparam("p_owner", type_=_C.lease_owner.type),
            lease_expires_at=bindparam("p_until", type_=_C.lease_expires_at.type),
        )
        .returning(_C.id)
        .cte("created")
    )
    values = [created.c.id.label("conversation_id") if v.name == "conversation_id" else v for v in _message_values()]
    return (
        insert(messages)
        .from_select([c.name for c in MESSAGE_COLUMNS], select(*values).select_from(created))
        .returning(_M.seq)
    )


CREATE: Final = _create()

BATCH_COLUMNS: Final[dict[str, TypeEngine[Any]]] = {
    "id": Uuid(),
    "role": String(),
    "content": Text(),
    "tool_calls": Text(),
    "tool_call_id": String(),
    "is_error": Boolean(),
    "status": String(),
    "created_at": DateTime(timezone=True),
}
"""The per-message columns of a batch, as PostgreSQL array element types (tool_calls as JSON text, cast in SQL)."""


USAGE_COLUMNS: Final[dict[str, TypeEngine[Any]]] = {
    "id": Uuid(),
    "provider": String(),
    "model": String(),
    "input_tokens": Integer(),
    "output_tokens": Integer(),
    "cached_read_tokens": Integer(),
    "cache_write_tokens": Integer(),
    "cost_picousd": BigInteger(),
    "latency_ms": Float(),
    "started_at": DateTime(timezone=True),
}
"""The per-call columns of the model calls recorded with a batch (``p_usage``: a JSON array of objects with these
keys, read by ``jsonb_to_recordset``); the user, conversation and turn are the batch's."""


def _unnested(prefix: str, columns: dict[str, TypeEngine[Any]], name: str) -> Any:
    """Rows from one array parameter per column (``<prefix><column>``), numbered from 1 (``position``)."""
    arrays = (bindparam(f"{prefix}{column_name}", type_=ARRAY(type_)) for column_name, type_ in columns.items())
    return (
        func.unnest(*arrays)
        .table_valued(*(column(n, t) for n, t in columns.items()), with_ordinality="position")
        .render_derived(name=name)
    )


def _append(*, release: bool) -> ReturningInsert[Any]:
    """Bump ``last_seq`` by ``p_by`` and insert the batch numbered up to it; with ``release`` the lease is given
    back (the turn's last write), else kept (a step stored as it happens). The model calls that produced the
    batch (``p_usage``, none for a tool result) are recorded as the user's and turn's in the same
    statement, only when the bump matched (the lease was held).

    The rows travel as one array per column through ``unnest``, so the SQL text is the same for
    every batch size and asyncpg reuses one prepared statement.
    """
    bumped = bump(release=release, close=release).returning(_C.last_seq).cte("bumped")
    unnested = _unnested("batch_", BATCH_COLUMNS, "batch")
    from_batch: dict[str, ColumnElement[Any]] = {name: unnested.c[name] for name in BATCH_COLUMNS}
    from_batch["tool_calls"] = cast(unnested.c.tool_calls, JSONB)
    calls = (
        func.jsonb_to_recordset(cast(bindparam("p_usage", type_=Text()), JSONB))
        .table_valued(*(column(name, type_) for name, type_ in USAGE_COLUMNS.items()))
        .render_derived(name="calls", with_types=True)
    )
    recorded = (
        insert(usage)
        .from_select(
            ["turn_id", "user_id", "conversation_id", *USAGE_COLUMNS],
            select(
                bindparam("p_turn_id", type_=_M.turn_id.type),
                bindparam("p_user", type_=_C.user_id.type),
                bindparam("p_conversation", type_=_M.conversation_id.type),
                *(calls.c[name] for name in USAGE_COLUMNS),
            ).select_from(bumped.join(calls, true())),
        )
        .cte("recorded")
    )
    return (
        insert(messages)
        .from_select(
            ["seq", "conversation_id", "turn_id", *from_batch],
            select(
                bumped.c.last_seq - bindparam("p_by", type_=Integer()) + unnested.c.position,
                bindparam("p_conversation", type_=_M.conversation_id.type),
                bindparam("p_turn_id", type_=_M.turn_id.type),
                *from_batch.values(),
            ).select_from(bumped.join(unnested, true())),
        )
        .returning(_M.seq)
        .add_cte(bumped)
        .add_cte(recorded)
    )


APPEND: Final = _append(release=True)
APPEND_HOLDING: Final = _append(release=False)


def bump_parameters(
    user_id: str,
    conversation_id: uuid.UUID,
    turn_id: uuid.UUID,
    *,
    now: datetime,
    by: int,
    lease_until: datetime | None = None,
) -> dict[str, Any]:
    """The bump's parameters, shared by every statement here; ``lease_until`` is for taking the lease."""
    owner = str(turn_id)  # the lease holder: a turn, or whoever took its turn up again
    return {
        "p_user": user_id,
        "p_conversation": conversation_id,
        "p_turn": owner,
        "p_now": now,
        "p_by": by,
        "p_owner": None if lease_until is None else owner,
        "p_until": lease_until,
    }


def message_parameters(message: Message) -> dict[str, Any]:
    """``m_<column>`` values of one stored message."""
    return {f"m_{name}": value for name, value in message_row(message).items()}


def batch_parameters(batch: Sequence[Message]) -> dict[str, Any]:
    """One array per column of the batch's messages (``APPEND``'s ``batch_<column>``)."""
    return {
        "batch_id": [m.id for m in batch],
        "batch_role": [m.role.value for m in batch],
        "batch_content": [m.content for m in batch],
        "batch_tool_calls": [
            None if not m.tool_calls else json.dumps(calls_to_json(m.tool_calls), ensure_ascii=False) for m in batch
        ],
        "batch_tool_call_id": [m.tool_call_id for m in batch],
        "batch_is_error": [m.is_error for m in batch],
        "batch_status": [m.status.value for m in batch],
        "batch_created_at": [m.created_at for m in batch],
    }


def usage_parameters(calls: Sequence[ModelCall]) -> dict[str, Any]:
    """``APPEND``'s ``p_usage``: the calls as one JSON text (one parameter, no per-column array to bind); ``[]``
    records none."""
    if not calls:
        return _NO_USAGE
    rows = [call_columns(c) for c in calls]
    for row in rows:
        row["id"], row["started_at"] = str(row["id"]), row["started_at"].isoformat()
    return {"p_usage": json.dumps(rows)}


_NO_USAGE: Final[dict[str, Any]] = {"p_usage": "[]"}


_WINDOW_JSON: Final = msgspec.json.Decoder(list[Message])
"""``WINDOW``'s JSON decoded into the domain's ``Message`` dataclasses directly (types checked, UUIDs and timestamps
parsed in C)."""


def window_messages(window: str | None) -> tuple[Message, ...]:
    """The messages of a ``CONTINUE`` row's window JSON, oldest first."""
    return () if window is None else tuple(_WINDOW_JSON.decode(window))
