"""The PostgreSQL statements of a streamed turn's event log, built once, each one round trip and atomic by itself.

A streamed turn writes its log three ways: it begins with its first event, appends batches of events while it
runs, and ends with its last events and its status. Each is one statement (data-modifying CTEs) that checks the
turn is the user's by copying from its row, so ``SqlAlchemyTurnEventStore`` runs them on asyncpg directly
(``asyncpg_statements.py``) without BEGIN/COMMIT around them. The events travel as one array per column through
``unnest``: the SQL text is the same for every batch size, and asyncpg reuses one prepared statement.

Every write that a follower or the running turn waits for also sends a notification on ``CHANNEL`` (delivered at
commit, so in the same transaction): ``<turn id>:<last seq>`` for new events, ``<turn id>:stop`` for a stop
request. ``turn_notifications.py`` listens to them.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    cast,
    column,
    func,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.dml import Insert

from chatcore.adapters.sqlalchemy.tables import conversations, turn_events, turns
from chatcore.model import TurnEvent, TurnStatus

CHANNEL: Final = "chatcore_turns"
"""The notification channel of streamed turns (one per database; a payload names its turn)."""
STOP: Final = "stop"

TURN_COLUMNS: Final = (
    turns.c.id,
    turns.c.conversation_id,
    turns.c.user_id,
    turns.c.status,
    turns.c.stop_requested_at,
    turns.c.created_at,
)

_T = turns.c
NOW = bindparam("p_now", type_=_T.updated_at.type)
_TURN = bindparam("p_turn", type_=_T.id.type)
_USER = bindparam("p_user", type_=_T.user_id.type)
_NOTICE = bindparam("p_notice", type_=String())


def _log_from(owner: FromClause, where: ColumnElement[bool] | None = None) -> Insert:
    """INSERT the batch's events (``e_seq``, ``e_type``, ``e_data`` as JSON text) as events of ``owner``'s one turn
    row: no row (another user's turn) inserts nothing."""
    batch = (
        func.unnest(
            bindparam("e_seq", type_=ARRAY(Integer())),
            bindparam("e_type", type_=ARRAY(String())),
            bindparam("e_data", type_=ARRAY(Text())),
        )
        .table_valued(column("seq", Integer()), column("type", String()), column("data", Text()))
        .render_derived(name="batch")
    )
    rows = select(
        owner.c.id,
        batch.c.seq,
        owner.c.conversation_id,
        owner.c.user_id,
        batch.c.type,
        cast(batch.c.data, JSONB),
        NOW,
    ).select_from(owner.join(batch, true()))
    if where is not None:
        rows = rows.where(where)
    return turn_events.insert().from_select(
        ["turn_id", "seq", "conversation_id", "user_id", "type", "data", "created_at"], rows
    )


def _begin() -> Select[Any]:
    """The turn's row (RUNNING), copied from the user's conversation, and its first events; the row as ``state``
    reads it, none when the conversation is not the user's."""
    begun = (
        turns.insert()
        .from_select(
            ["conversation_id", "id", "user_id", "status", "created_at", "updated_at"],
            select(conversations.c.id, _TURN, _USER, literal(TurnStatus.RUNNING.value, _T.status.type), NOW, NOW).where(
                conversations.c.id == bindparam("p_conversation", type_=conversations.c.id.type),
                conversations.c.user_id == _USER,
            ),
        )
        .returning(*TURN_COLUMNS)
        .cte("begun")
    )
    logged = _log_from(begun).cte("logged")
    return select(*begun.c).add_cte(logged)


_OWNED = (_T.id == _TURN) & (_T.user_id == _USER)


def _append() -> Select[Any]:
    """The events, and a notification: (the number of events stored, null)."""
    logged = _log_from(turns, _OWNED).returning(turn_events.c.seq).cte("logged")
    return select(select(func.count()).select_from(logged).scalar_subquery(), func.pg_notify(CHANNEL, _NOTICE))


def _end() -> Select[Any]:
    """The turn's last events and its status in one go (events first for any reader: both commit at once),
    and a notification: (1 when the turn was the user's, else 0; null)."""
    logged = _log_from(turns, _OWNED).cte("logged")
    ended = (
        update(turns)
        .where(_OWNED)
        .values(status=bindparam("p_status", type_=_T.status.type), updated_at=NOW)
        .returning(_T.id)
        .cte("ended")
    )
    return select(select(func.count()).select_from(ended).scalar_subquery(), func.pg_notify(CHANNEL, _NOTICE)).add_cte(
        logged
    )


def stop_requests(owned: ColumnElement[bool]) -> Select[Any]:
    """Flag the running turns matching ``owned`` to stop, and notify each: their ids."""
    stopped = (
        update(turns)
        .where(owned, _T.status == TurnStatus.RUNNING.value)
        .values(stop_requested_at=NOW)
        .returning(_T.id)
        .cte("stopped")
    )
    return select(
        stopped.c.id, func.pg_notify(CHANNEL, cast(stopped.c.id, String()) + literal(f":{STOP}"))
    ).select_from(stopped)


BEGIN: Final = _begin()
APPEND: Final = _append()
END: Final = _end()


def event_parameters(events: list[TurnEvent] | tuple[TurnEvent, ...], encode: Any) -> dict[str, Any]:
    """One array per column of the events (``e_*``); ``encode`` turns an event's data into JSON text."""
    return {
        "e_seq": [event.seq for event in events],
        "e_type": [event.type for event in events],
        "e_data": [encode(event.data) for event in events],
    }


def notice(turn_id: Any, last_seq: int) -> str:
    """The payload telling listeners the turn's events up to ``last_seq`` are stored."""
    return f"{turn_id}:{last_seq}"
