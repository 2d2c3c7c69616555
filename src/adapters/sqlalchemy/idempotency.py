"""Idempotency-Key rows for SqlAlchemyConversationStore: claim, complete, renew, release.

A key row is the user's (``user_id, key`` is the primary key) and says which request it
belongs to (``request_hash``). While a turn runs it is ``in_progress`` and names the turn
(``turn_id``) until ``expires_at``, which the turn's heartbeat pushes on; when the turn
finishes it becomes ``completed`` with the reply, kept until ``expires_at`` (the TTL), still
naming the turn, whose stored events a streamed retry replays. A
row past ``expires_at`` counts as absent: a claim takes it over, and claims delete a few
expired rows each (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two claims never wait on
each other's garbage), which keeps the table at about the keys still alive.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Delete, and_, delete, not_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chatcore.adapters.sqlalchemy.tables import idempotency_keys as keys_table
from chatcore.errors import IdempotencyInProgress, IdempotencyKeyReused
from chatcore.idempotency import IdempotencyRecord, IdempotentReply, reply_from_json, reply_to_json
from chatcore.model import ChatReply

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
PURGE_BATCH = 20
"""Expired rows a claim deletes: more than the one row a claim adds, so the table cannot grow without bound."""
CLAIM_ATTEMPTS = 3
"""A claim that finds the row gone between its two statements (released or purged just then) tries again."""


async def claim(
    connection: AsyncConnection,
    user_id: str,
    key: str,
    request_hash: str,
    *,
    turn_id: uuid.UUID,
    now: datetime,
    hold_until: datetime,
) -> ChatReply | None:
    """Insert the key for ``turn_id``, or take over an expired row; else judge the live row that is there."""
    columns = keys_table.c
    row: dict[str, Any] = {
        "user_id": user_id,
        "key": key,
        "request_hash": request_hash,
        "status": IN_PROGRESS,
        "response": None,
        "conversation_id": None,
        "created_at": now,
        "expires_at": hold_until,
        "turn_id": turn_id,
    }
    purged = purge(now, PURGE_BATCH, keep=(user_id, key))
    on_postgresql = connection.dialect.name == "postgresql"
    upsert_base = postgresql.insert(keys_table) if on_postgresql else sqlite.insert(keys_table)
    upsert = (
        upsert_base.values(row)
        .on_conflict_do_update(
            index_elements=[columns.user_id, columns.key],
            set_={name: upsert_base.excluded[name] for name in row if name not in ("user_id", "key")},
            where=columns.expires_at <= now,
        )
        .returning(columns.turn_id)
    )
    if on_postgresql:
        upsert = upsert.add_cte(purged.cte("purged"))  # one round trip: the purge runs once, unread
    else:
        await connection.execute(purged)
    for _ in range(CLAIM_ATTEMPTS):
        if (await connection.execute(upsert)).first() is not None:
            return None
        found = (
            await connection.execute(
                select(columns.request_hash, columns.status, columns.response).where(
                    columns.user_id == user_id, columns.key == key
                )
            )
        ).first()
        if found is None:
            continue
        if found.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if found.status == COMPLETED and found.response is not None:
            return reply_from_json(found.response)
        raise IdempotencyInProgress()
    raise IdempotencyInProgress()


async def read(connection: AsyncConnection, user_id: str, key: str, *, now: datetime) -> IdempotencyRecord | None:
    columns = keys_table.c
    found = (
        await connection.execute(
            select(columns.request_hash, columns.status, columns.response, columns.turn_id).where(
                columns.user_id == user_id, columns.key == key, columns.expires_at > now
            )
        )
    ).first()
    if found is None:
        return None
    completed = found.status == COMPLETED and found.response is not None
    return IdempotencyRecord(found.request_hash, found.turn_id, reply_from_json(found.response) if completed else None)


def purge(now: datetime, limit: int, *, keep: tuple[str, str] | None = None) -> Delete:
    """Delete at most ``limit`` keys expired at ``now`` (oldest first), except ``keep`` (a user's key being claimed);
    rows another transaction has locked are skipped, not waited for."""
    columns = keys_table.c
    expired = select(columns.user_id, columns.key).where(columns.expires_at <= now)
    if keep is not None:
        expired = expired.where(not_(and_(columns.user_id == keep[0], columns.key == keep[1])))
    return delete(keys_table).where(
        columns.expires_at <= now,
        tuple_(columns.user_id, columns.key).in_(
            expired.order_by(columns.expires_at).limit(max(limit, 0)).with_for_update(skip_locked=True)
        ),
    )


async def complete(
    connection: AsyncConnection,
    user_id: str,
    completion: IdempotentReply,
    *,
    turn_id: uuid.UUID,
    conversation_id: uuid.UUID,
    now: datetime,
) -> bool:
    """Store the reply under the key ``turn_id`` holds; False when the key is no longer its own."""
    columns = keys_table.c
    result = await connection.execute(
        update(keys_table)
        .where(
            columns.user_id == user_id,
            columns.key == completion.key,
            columns.turn_id == turn_id,
            columns.status == IN_PROGRESS,
        )
        .values(
            status=COMPLETED,
            response=reply_to_json(completion.reply),
            conversation_id=conversation_id,
            expires_at=now + timedelta(seconds=completion.ttl_seconds),
        )
    )
    return result.rowcount == 1


async def renew(connection: AsyncConnection, user_id: str, key: str, *, turn_id: uuid.UUID, until: datetime) -> bool:
    columns = keys_table.c
    result = await connection.execute(
        update(keys_table)
        .where(
            columns.user_id == user_id, columns.key == key, columns.turn_id == turn_id, columns.status == IN_PROGRESS
        )
        .values(expires_at=until)
    )
    return result.rowcount == 1


async def release(connection: AsyncConnection, user_id: str, key: str, *, turn_id: uuid.UUID) -> None:
    columns = keys_table.c
    await connection.execute(
        delete(keys_table).where(
            columns.user_id == user_id, columns.key == key, columns.turn_id == turn_id, columns.status == IN_PROGRESS
        )
    )
