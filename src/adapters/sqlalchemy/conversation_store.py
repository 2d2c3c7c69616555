"""SqlAlchemyConversationStore: conversations and messages in PostgreSQL or SQLite.

Sequence numbers come from ``conversations.last_seq``: a turn bumps it with one
UPDATE, which checks ownership, reserves the seqs and row-locks the conversation
until commit, so concurrent writers to one conversation queue up instead of
colliding. On PostgreSQL each write is a single statement (data-modifying CTEs, built
once in ``turn_statements.py`` and run without BEGIN/COMMIT around them), plus one re-read
of the window when ``begin_turn`` had to wait for another turn; elsewhere the same steps
run as a few statements in one transaction.

The same UPDATE takes and gives back the conversation's lease (``lease_owner``,
``lease_expires_at``): it matches no row while another turn holds a live lease, so a
busy conversation costs no extra statement on the normal path, and no lock is waited
for behind a turn that is thinking. Only when it matches nothing does a second query
tell "not yours" from "busy". Idempotency-Key rows are in ``idempotency.py``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    Uuid,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable
from sqlalchemy.util import greenlet_spawn

from chatcore.adapters.sqlalchemy import approvals as approval_sql
from chatcore.adapters.sqlalchemy import idempotency as keys
from chatcore.adapters.sqlalchemy import turn_statements as turn_sql
from chatcore.adapters.sqlalchemy.driver_statements import DriverStatement, compile_all
from chatcore.adapters.sqlalchemy.errors import is_unavailable, store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.tables import TITLE_MAX_LENGTH, as_utc
from chatcore.adapters.sqlalchemy.tables import conversations as conversations_table
from chatcore.adapters.sqlalchemy.tables import messages as messages_table
from chatcore.adapters.sqlalchemy.tables import tool_approvals as approvals_table
from chatcore.errors import ChatError, ConversationBusy, ConversationNotFound, LeaseLost, TurnStillOpen
from chatcore.idempotency import IdempotentReply
from chatcore.model import (
    PREVIEW_LENGTH,
    ChatMessage,
    ChatReply,
    Conversation,
    ConversationSummary,
    JsonValue,
    Message,
    MessageStatus,
    Role,
    ToolApproval,
    ToolCall,
    ToolDecision,
    TurnResumption,
    TurnStart,
    utcnow,
)

_CONVERSATION_COLUMNS = (
    conversations_table.c.id,
    conversations_table.c.user_id,
    conversations_table.c.title,
    conversations_table.c.created_at,
    conversations_table.c.updated_at,
    conversations_table.c.last_seq,
)
_MESSAGE_COLUMNS = tuple(messages_table.c)
_MESSAGE_PREFIX = "m_"


class SqlAlchemyConversationStore:
    """A ``chatcore.ports.ConversationStore`` on an AsyncEngine from ``engine.create_engine``.

    ``clock`` stamps rows and judges lease and key expiry; every replica's clock should be NTP-synced
    (a skew of well under the lease is harmless).

    ``driver_statements``: on PostgreSQL with asyncpg, the turn's statements run on asyncpg directly
    (see ``driver_statements.py``); False keeps them in SQLAlchemy's execution layer, where cursor
    events (and so OpenTelemetry's SQL spans) see them.
    """

    def __init__(
        self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow, driver_statements: bool = True
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._single_statement = engine.dialect.name == "postgresql"
        # A turn's statements on PostgreSQL are atomic one by one: run alone, they need no BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT") if self._single_statement else engine
        self._sync_engine = engine.sync_engine  # its pool is read at each use: ``dispose()`` replaces it
        self._driver: dict[int, DriverStatement] = {}
        if driver_statements and self._single_statement and engine.dialect.driver == "asyncpg":
            self._driver = compile_all(
                (
                    turn_sql.CONTINUE,
                    turn_sql.CONTINUE_TAKING_LEASE,
                    turn_sql.CREATE,
                    turn_sql.APPEND,
                    turn_sql.APPEND_HOLDING,
                ),
                engine.dialect,
            )

    async def _autocommitted(self, statement: Executable, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """One of the turn's prebuilt statements, run alone (so atomic by itself, no BEGIN/COMMIT): its rows.

        With ``driver_statements`` it goes to asyncpg directly, on a connection checked out of the
        engine's pool without a SQLAlchemy ``Connection`` around it (the checkout still runs the pool's
        liveness checks); otherwise through an autocommit ``Connection``.
        """
        driver = self._driver.get(id(statement))
        if driver is None:
            async with self._autocommit.connect() as connection:
                return (await connection.execute(statement, parameters)).all()
        pooled = await greenlet_spawn(self._sync_engine.pool.connect)
        try:
            asyncpg_connection: Any = pooled.driver_connection  # set while checked out
            rows: Sequence[Sequence[Any]] = await asyncpg_connection.fetch(driver.sql, *driver.arguments(parameters))
        except Exception as error:
            if is_unavailable(error):  # SQLAlchemy did not see it fail: the connection must not go back to the pool
                with contextlib.suppress(Exception):
                    await greenlet_spawn(pooled.invalidate, error)
            raise
        finally:
            pooled.close()  # no transaction was begun on it, so giving it back never awaits
        return rows

    async def _missing_or_busy(
        self, user_id: str, conversation_id: uuid.UUID, otherwise: ChatError, lease: _Lease | None = None
    ) -> ChatError:
        async with self._autocommit.connect() as connection:
            return await _missing_or(connection, user_id, conversation_id, otherwise, lease)

    async def begin_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID | None,
        message: ChatMessage,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        title: str | None = None,
        lease_seconds: float | None = None,
    ) -> TurnStart:
        now = self._clock()
        lease = _Lease(turn_id, now, None if lease_seconds is None else now + timedelta(seconds=lease_seconds))
        if self._single_statement:  # one statement (plus, rarely, reads after it): autocommit
            async with store_unavailable_on_outage():
                if conversation_id is None:
                    return await self._create_in_one_statement(user_id, message, lease, title)
                return await self._continue_in_one_statement(user_id, conversation_id, message, lease, history_limit)
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if conversation_id is None:
                return await self._create(connection, user_id, message, lease, title)
            return await self._continue(connection, user_id, conversation_id, message, lease, history_limit)

    async def _create_in_one_statement(
        self, user_id: str, message: ChatMessage, lease: _Lease, title: str | None
    ) -> TurnStart:
        now, turn_id = lease.now, lease.turn_id
        conversation = _new_conversation(user_id, now, title)
        user_message = _stored(message, conversation.id, 1, turn_id)
        parameters = turn_sql.bump_parameters(user_id, conversation.id, turn_id, now=now, by=1, lease_until=lease.until)
        parameters["p_title"] = conversation.title
        await self._autocommitted(turn_sql.CREATE, parameters | turn_sql.message_parameters(user_message))
        return TurnStart(conversation, (), user_message, created=True)

    async def _create(
        self,
        connection: AsyncConnection,
        user_id: str,
        message: ChatMessage,
        lease: _Lease,
        title: str | None,
    ) -> TurnStart:
        now, turn_id = lease.now, lease.turn_id
        conversation = _new_conversation(user_id, now, title)
        user_message = _stored(message, conversation.id, 1, turn_id)
        create = insert(conversations_table).values(
            id=conversation.id,
            user_id=user_id,
            title=conversation.title,
            created_at=now,
            updated_at=now,
            last_seq=1,
            lease_owner=None if lease.until is None else str(turn_id),
            lease_expires_at=lease.until,
        )
        await connection.execute(create)
        await connection.execute(insert(messages_table).values(_row(user_message)))
        return TurnStart(conversation, (), user_message, created=True)

    async def _continue(
        self,
        connection: AsyncConnection,
        user_id: str,
        conversation_id: uuid.UUID,
        message: ChatMessage,
        lease: _Lease,
        history_limit: int,
    ) -> TurnStart:
        """Reserve the next seq (checking ownership and the lease), read the window below it, store the message."""
        turn_id = lease.turn_id
        found = (
            await connection.execute(
                _bump(user_id, conversation_id, by=1, lease=lease, require_closed=True).returning(
                    *_CONVERSATION_COLUMNS
                )
            )
        ).one_or_none()
        if found is None:
            raise await _missing_or(connection, user_id, conversation_id, ConversationBusy(), lease)
        seq: int = found.last_seq
        history = await _window(connection, conversation_id, before=seq, limit=history_limit)
        user_message = _stored(message, conversation_id, seq, turn_id)
        await connection.execute(insert(messages_table).values(_row(user_message)))
        return TurnStart(_conversation_from(found._mapping), history, user_message, created=False)

    async def _continue_in_one_statement(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        message: ChatMessage,
        lease: _Lease,
        history_limit: int,
    ) -> TurnStart:
        """``_continue`` as one PostgreSQL statement: one round trip, whatever the window size.

        The INSERT's CTE runs exactly once even though nothing reads it. Every part of the
        statement reads the snapshot taken when it started, so the window cannot see the new
        row, but also misses a turn that committed while the UPDATE waited for the row lock.
        Committed seqs have no gaps, so such a window is recognisable (it does not end right
        below the reserved seq) and is read again by a new statement: every seq below ours was
        committed before our UPDATE got the row lock, so the second read sees them all.
        """
        turn_id = lease.turn_id
        parameters = turn_sql.bump_parameters(
            user_id, conversation_id, turn_id, now=lease.now, by=1, lease_until=lease.until
        )
        parameters["p_limit"] = max(history_limit, 0)
        parameters |= turn_sql.message_parameters(_stored(message, conversation_id, 0, turn_id))
        statement = turn_sql.CONTINUE if lease.until is None else turn_sql.CONTINUE_TAKING_LEASE
        rows = await self._autocommitted(statement, parameters)
        if not rows:
            raise await self._missing_or_busy(user_id, conversation_id, ConversationBusy(), lease)
        first = rows[0]
        seq: int = first[turn_sql.LAST_SEQ]
        history = turn_sql.window_messages(first[turn_sql.WINDOW])
        complete = list(range(max(seq - max(history_limit, 0), 1), seq))
        if [m.seq for m in history] != complete:
            async with self._autocommit.connect() as connection:
                history = await _window(connection, conversation_id, before=seq, limit=history_limit)
        return TurnStart(
            turn_sql.conversation_of(first),
            history,
            _stored(message, conversation_id, seq, turn_id),
            created=False,
        )

    async def append_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
        holder: uuid.UUID,
        approvals: Sequence[ToolApproval] = (),
        close: bool = False,
    ) -> tuple[Message, ...]:
        now = self._clock()
        keep = _Lease(holder, now, None, opens=turn_id if approvals else None, close=close and not approvals)
        if messages and self._single_statement and not approvals and not close:  # a step: one statement
            async with store_unavailable_on_outage():
                parameters = self._append_parameters(user_id, conversation_id, messages, keep, turn_id)
                rows = await self._autocommitted(turn_sql.APPEND_HOLDING, parameters)
                if not rows:
                    raise await self._missing_or_busy(user_id, conversation_id, LeaseLost())
                return _appended(messages, conversation_id, turn_id, rows)
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            stored = await self._append(connection, user_id, conversation_id, messages, keep, turn_id)
            if approvals:
                await approval_sql.insert_pending(connection, user_id, conversation_id, turn_id, approvals, now=now)
            return stored

    async def finish_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        *,
        turn_id: uuid.UUID,
        holder: uuid.UUID | None = None,
        idempotency: IdempotentReply | None = None,
        keep_open: bool = False,
    ) -> tuple[Message, ...]:
        now = self._clock()
        holder = turn_id if holder is None else holder
        release = _Lease(holder, now, None, True, close=not keep_open)
        if messages and self._single_statement and idempotency is None and not keep_open:  # one statement
            async with store_unavailable_on_outage():
                parameters = self._append_parameters(user_id, conversation_id, messages, release, turn_id)
                rows = await self._autocommitted(turn_sql.APPEND, parameters)
                if not rows:
                    raise await self._missing_or_busy(user_id, conversation_id, LeaseLost())
                return _appended(messages, conversation_id, turn_id, rows)
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if messages and self._single_statement and not keep_open:
                stored = await self._append_in_one_statement(
                    connection, user_id, conversation_id, messages, release, turn_id
                )
            else:
                stored = await self._append(connection, user_id, conversation_id, messages, release, turn_id)
            if idempotency is not None and not await keys.complete(
                connection, user_id, idempotency, turn_id=holder, conversation_id=conversation_id, now=now
            ):
                raise LeaseLost()  # leaving the block rolls the messages back with it
            return stored

    async def _append(
        self,
        connection: AsyncConnection,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        lease: _Lease,
        turn_id: uuid.UUID,
    ) -> tuple[Message, ...]:
        last_seq = (
            await connection.execute(
                _bump(user_id, conversation_id, by=len(messages), lease=lease).returning(conversations_table.c.last_seq)
            )
        ).scalar_one_or_none()
        if last_seq is None:
            raise await _missing_or(connection, user_id, conversation_id, LeaseLost())
        first = last_seq - len(messages) + 1
        stored = tuple(_stored(m, conversation_id, first + i, turn_id) for i, m in enumerate(messages))
        if stored:
            await connection.execute(insert(messages_table).values([_row(m) for m in stored]))
        return stored

    async def _append_in_one_statement(
        self,
        connection: AsyncConnection,
        user_id: str,
        conversation_id: uuid.UUID,
        batch: Sequence[ChatMessage],
        release: _Lease,
        turn_id: uuid.UUID,
    ) -> tuple[Message, ...]:
        """``finish_turn`` as one PostgreSQL statement, in the caller's transaction."""
        parameters = self._append_parameters(user_id, conversation_id, batch, release, turn_id)
        rows = (await connection.execute(turn_sql.APPEND, parameters)).all()
        if not rows:
            raise await _missing_or(connection, user_id, conversation_id, LeaseLost())
        return _appended(batch, conversation_id, turn_id, rows)

    async def resume_turn(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        turn_id: uuid.UUID,
        *,
        holder: uuid.UUID,
        lease_seconds: float,
        history_limit: int,
    ) -> TurnResumption:
        """One transaction: take the lease (a bump by nothing), then read the turn, its approvals and the window."""
        now = self._clock()
        lease = _Lease(holder, now, now + timedelta(seconds=lease_seconds))
        bump = _bump(user_id, conversation_id, by=0, lease=lease).returning(
            *_CONVERSATION_COLUMNS, conversations_table.c.open_turn_id
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            found = (await connection.execute(bump)).one_or_none()
            if found is None:
                raise await _missing_or(connection, user_id, conversation_id, ConversationBusy(), lease)
            turn = await _turn_messages(connection, conversation_id, turn_id)
            before = turn[0].seq if turn else found.last_seq + 1
            history = await _window(connection, conversation_id, before=before, limit=history_limit)
            approvals = await approval_sql.of_turn(connection, conversation_id, turn_id)
        return TurnResumption(
            conversation=_conversation_from(found._mapping),
            turn_id=turn_id,
            open=found.open_turn_id == turn_id,
            history=history,
            turn=turn,
            approvals=approvals,
        )

    @staticmethod
    def _append_parameters(
        user_id: str, conversation_id: uuid.UUID, batch: Sequence[ChatMessage], lease: _Lease, turn_id: uuid.UUID
    ) -> dict[str, Any]:
        """Bump ``last_seq`` by n and insert n rows of turn ``turn_id`` numbered below it, ``lease.turn_id`` holding.

        The rows travel as one array per column through ``unnest``, so the SQL text is the
        same for every batch size and asyncpg reuses one prepared statement.
        """
        parameters = turn_sql.bump_parameters(user_id, conversation_id, lease.turn_id, now=lease.now, by=len(batch))
        parameters["p_turn_id"] = turn_id
        parameters |= turn_sql.batch_parameters([_stored(m, conversation_id, 0, turn_id) for m in batch])
        return parameters

    async def mark_unanswered(self, user_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID) -> None:
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            result = await connection.execute(
                update(messages_table)
                .where(
                    messages_table.c.id == message_id,
                    messages_table.c.conversation_id == conversation_id,
                    messages_table.c.conversation_id.in_(_owned(user_id, conversation_id)),
                )
                .values(status=MessageStatus.UNANSWERED.value)
            )
            if result.rowcount == 0 and (await connection.scalar(_owned(user_id, conversation_id))) is None:
                raise ConversationNotFound()

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
                    _held_by(user_id, conversation_id, turn_id).values(lease_expires_at=until)
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
                    _held_by(user_id, conversation_id, turn_id).values(lease_owner=None, lease_expires_at=None)
                )
            if idempotency_key is not None:
                await keys.release(connection, user_id, idempotency_key, turn_id=turn_id)

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

    async def get(self, user_id: str, conversation_id: uuid.UUID) -> Conversation:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            found = (
                await connection.execute(
                    select(*_CONVERSATION_COLUMNS).where(
                        conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id
                    )
                )
            ).one_or_none()
        if found is None:
            raise ConversationNotFound()
        return _conversation_from(found._mapping)

    async def history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> tuple[Message, ...]:
        """One statement: the conversation row (the ownership check) left-joined to its window.

        The window filters by the bound id rather than correlating, so no LATERAL is needed
        and the statement runs on SQLite too.
        """
        window = (
            select(*_MESSAGE_COLUMNS)
            .where(messages_table.c.conversation_id == conversation_id)
            .order_by(messages_table.c.seq.desc())
            .limit(max(limit, 0))
            .subquery("window")
        )
        statement = (
            select(
                conversations_table.c.id.label("conversation"),
                *(window.c[c.name].label(_MESSAGE_PREFIX + c.name) for c in _MESSAGE_COLUMNS),
            )
            .select_from(conversations_table.outerjoin(window, true()))
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            raise ConversationNotFound()
        found = [_message_from(r._mapping, prefix=_MESSAGE_PREFIX) for r in rows if r._mapping["m_id"] is not None]
        return tuple(sorted(found, key=lambda m: m.seq))

    async def turn_messages(self, user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> tuple[Message, ...]:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            turn = await _turn_messages(connection, conversation_id, turn_id, owner=user_id)
            if not turn and (await connection.scalar(_owned(user_id, conversation_id))) is None:
                raise ConversationNotFound()
        return turn

    async def decide_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        decisions: Sequence[ToolDecision],
        *,
        expire_before: datetime,
    ) -> tuple[ToolApproval, ...]:
        now = self._clock()
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if (await connection.scalar(_owned(user_id, conversation_id))) is None:
                raise ConversationNotFound()
            return await approval_sql.decide(
                connection, conversation_id, decisions, now=now, expire_before=expire_before
            )

    async def deny_pending(
        self, user_id: str, conversation_id: uuid.UUID, *, reason: str, requested_before: datetime | None = None
    ) -> None:
        now = self._clock()
        async with store_unavailable_on_outage(), self._autocommit.connect() as connection:
            await approval_sql.deny_pending(
                connection, conversation_id, reason, now=now, before=requested_before, user_id=user_id
            )
            if not self._single_statement:
                await connection.commit()

    async def start_tool_calls(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        calls: Sequence[tuple[uuid.UUID, str]],
        *,
        holder: uuid.UUID,
    ) -> tuple[tuple[uuid.UUID, str], ...]:
        if not calls:
            return ()
        held = _held_by(user_id, conversation_id, holder).values(updated_at=conversations_table.c.updated_at)
        now = self._clock()
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            # Locks the conversation row while its lease is ours: no one takes the lease over mid-way.
            if (await connection.execute(held)).rowcount != 1:
                return ()
            return await approval_sql.start(connection, conversation_id, calls, now=now)

    async def list_approvals(
        self, user_id: str, conversation_id: uuid.UUID, *, message_ids: Sequence[uuid.UUID] | None = None
    ) -> tuple[ToolApproval, ...]:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            found = await approval_sql.of_conversation(connection, user_id, conversation_id, message_ids)
        if found is None:
            raise ConversationNotFound()
        return found

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
            select(*_CONVERSATION_COLUMNS, preview.label("preview"), awaiting.label("awaiting_approval"))
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
        """One statement, like ``history``: the ownership row left-joined to a forward scan of the unique index."""
        page = (
            select(*_MESSAGE_COLUMNS)
            .where(messages_table.c.conversation_id == conversation_id, messages_table.c.seq > after_seq)
            .order_by(messages_table.c.seq)
            .limit(max(limit, 0))
            .subquery("page")
        )
        statement = (
            select(
                conversations_table.c.id.label("conversation"),
                *(page.c[c.name].label(_MESSAGE_PREFIX + c.name) for c in _MESSAGE_COLUMNS),
            )
            .select_from(conversations_table.outerjoin(page, true()))
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
        )
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        if not rows:
            raise ConversationNotFound()
        found = [_message_from(r._mapping, prefix=_MESSAGE_PREFIX) for r in rows if r._mapping["m_id"] is not None]
        return tuple(sorted(found, key=lambda m: m.seq))

    async def rename(self, user_id: str, conversation_id: uuid.UUID, title: str) -> Conversation:
        statement = (
            update(conversations_table)
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
            .values(title=title[:TITLE_MAX_LENGTH])
            .returning(*_CONVERSATION_COLUMNS)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            found = (await connection.execute(statement)).one_or_none()
        if found is None:
            raise ConversationNotFound()
        return _conversation_from(found._mapping)

    async def delete(self, user_id: str, conversation_id: uuid.UUID) -> None:
        """One DELETE; messages, turns and turn events go with it through ON DELETE CASCADE."""
        statement = (
            delete(conversations_table)
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
            .returning(conversations_table.c.id)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            found = (await connection.execute(statement)).one_or_none()
        if found is None:
            raise ConversationNotFound()

    async def ping(self) -> None:
        async with store_unavailable_on_outage(), self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))


def _new_conversation(user_id: str, now: datetime, title: str | None) -> Conversation:
    return Conversation(
        id=uuid.uuid4(),
        user_id=user_id,
        title=title[:TITLE_MAX_LENGTH] if title is not None else None,
        created_at=now,
        updated_at=now,
    )


def _appended(
    batch: Sequence[ChatMessage], conversation_id: uuid.UUID, turn_id: uuid.UUID, rows: Sequence[Sequence[Any]]
) -> tuple[Message, ...]:
    """The batch as stored: ``APPEND`` returned the seqs it numbered them with."""
    first = min(row[0] for row in rows)
    return tuple(_stored(m, conversation_id, first + i, turn_id) for i, m in enumerate(batch))


async def _turn_messages(
    connection: AsyncConnection, conversation_id: uuid.UUID, turn_id: uuid.UUID, *, owner: str | None = None
) -> tuple[Message, ...]:
    """Turn ``turn_id``'s messages in order (only if ``owner`` owns the conversation, when given)."""
    conversation = (
        messages_table.c.conversation_id == conversation_id
        if owner is None
        else messages_table.c.conversation_id.in_(_owned(owner, conversation_id))
    )
    statement = (
        select(*_MESSAGE_COLUMNS)
        .where(conversation, messages_table.c.turn_id == turn_id)
        .order_by(messages_table.c.seq)
    )
    return tuple(_message_from(row._mapping) for row in (await connection.execute(statement)).all())


async def _window(
    connection: AsyncConnection, conversation_id: uuid.UUID, *, before: int, limit: int
) -> tuple[Message, ...]:
    """The last ``limit`` messages below seq ``before``, oldest first: a backward scan of the unique index."""
    if limit <= 0:
        return ()
    statement = (
        select(*_MESSAGE_COLUMNS)
        .where(messages_table.c.conversation_id == conversation_id, messages_table.c.seq < before)
        .order_by(messages_table.c.seq.desc())
        .limit(limit)
    )
    rows = (await connection.execute(statement)).all()
    return tuple(_message_from(row._mapping) for row in reversed(rows))


@dataclass(frozen=True, slots=True)
class _Lease:
    """What a bump does with the conversation's lease for ``turn_id`` (its holder): take it until ``until``, give
    it back (``release``), or neither; in every case it matches no row while another turn's lease is live.

    It may also make a turn the conversation's open turn (``opens``) or close the open turn (``close``).
    """

    turn_id: uuid.UUID
    now: datetime
    until: datetime | None
    release: bool = False
    opens: uuid.UUID | None = None
    close: bool = False


def _bump(user_id: str, conversation_id: uuid.UUID, *, by: int, lease: _Lease, require_closed: bool = False) -> Update:
    """Reserve ``by`` seqs of the user's conversation; matches no row when another user owns it or holds it, nor,
    with ``require_closed``, while it has an open turn."""
    columns = conversations_table.c
    values: dict[str, Any] = {"last_seq": columns.last_seq + by, "updated_at": lease.now}
    if lease.until is not None:
        values.update(lease_owner=str(lease.turn_id), lease_expires_at=lease.until)
    elif lease.release:
        values.update(lease_owner=None, lease_expires_at=None)
    if lease.opens is not None:
        values["open_turn_id"] = lease.opens
    elif lease.close:
        values["open_turn_id"] = None
    conditions = [columns.id == conversation_id, columns.user_id == user_id, _free_for(lease.turn_id, lease.now)]
    if require_closed:
        conditions.append(columns.open_turn_id.is_(None))
    return update(conversations_table).where(*conditions).values(**values)


def _free_for(turn_id: uuid.UUID, now: datetime) -> ColumnElement[bool]:
    """No turn but ``turn_id`` holds a lease that is still live at ``now``."""
    columns = conversations_table.c
    return or_(
        columns.lease_owner.is_(None),
        columns.lease_owner == str(turn_id),
        columns.lease_expires_at.is_(None),
        columns.lease_expires_at <= now,
    )


def _held_by(user_id: str, conversation_id: uuid.UUID, turn_id: uuid.UUID) -> Update:
    columns = conversations_table.c
    return update(conversations_table).where(
        columns.id == conversation_id, columns.user_id == user_id, columns.lease_owner == str(turn_id)
    )


async def _missing_or(
    connection: AsyncConnection,
    user_id: str,
    conversation_id: uuid.UUID,
    otherwise: ChatError,
    beginning: _Lease | None = None,
) -> ChatError:
    """Why a bump matched nothing: the conversation is not the user's, or (``otherwise``) another turn holds it.

    For a turn ``beginning`` it may also be free but have an open turn: TurnStillOpen, to close that turn first.
    """
    columns = conversations_table.c
    found = (
        await connection.execute(
            select(columns.open_turn_id, columns.lease_owner, columns.lease_expires_at).where(
                columns.id == conversation_id, columns.user_id == user_id
            )
        )
    ).one_or_none()
    if found is None:
        return ConversationNotFound()
    if beginning is not None and found.open_turn_id is not None:
        held = (
            found.lease_owner is not None
            and found.lease_owner != str(beginning.turn_id)
            and found.lease_expires_at is not None
            and as_utc(found.lease_expires_at) > beginning.now
        )
        if not held:
            return TurnStillOpen(found.open_turn_id)
    return otherwise


def _owned(user_id: str, conversation_id: uuid.UUID) -> Select[tuple[uuid.UUID]]:
    return select(conversations_table.c.id).where(
        conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id
    )


def _stored(message: ChatMessage, conversation_id: uuid.UUID, seq: int, turn_id: uuid.UUID) -> Message:
    return Message(
        id=message.id,
        role=message.role,
        content=message.content,
        tool_calls=tuple(message.tool_calls),
        tool_call_id=message.tool_call_id,
        is_error=message.is_error,
        created_at=as_utc(message.created_at),
        conversation_id=conversation_id,
        seq=seq,
        status=message.status if isinstance(message, Message) else MessageStatus.COMPLETE,
        turn_id=turn_id,
    )


def _row(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "role": message.role.value,
        "content": message.content,
        "tool_calls": _calls_to_json(message.tool_calls),
        "tool_call_id": message.tool_call_id,
        "is_error": message.is_error,
        "status": message.status.value,
        "turn_id": message.turn_id,
        "created_at": message.created_at,
    }


def _calls_to_json(calls: Sequence[ToolCall]) -> list[dict[str, JsonValue]] | None:
    if not calls:
        return None
    return [{"id": call.id, "name": call.name, "arguments": dict(call.arguments)} for call in calls]


def _calls_from_json(value: Any) -> tuple[ToolCall, ...]:
    if not value:
        return ()
    return tuple(ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments") or {}) for c in value)


def _message_from(row: RowMapping, prefix: str = "") -> Message:
    return Message(
        id=row[prefix + "id"],
        role=Role(row[prefix + "role"]),
        content=row[prefix + "content"],
        tool_calls=_calls_from_json(row[prefix + "tool_calls"]),
        tool_call_id=row[prefix + "tool_call_id"],
        is_error=bool(row[prefix + "is_error"]),
        created_at=row[prefix + "created_at"],
        conversation_id=row[prefix + "conversation_id"],
        seq=row[prefix + "seq"],
        status=MessageStatus(row[prefix + "status"]),
        turn_id=row[prefix + "turn_id"],
    )


def _conversation_from(row: RowMapping) -> Conversation:
    return Conversation(
        id=row["id"],
        user_id=row["user_id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
