"""SqlAlchemyConversationStore: the writes of conversations and messages in PostgreSQL or SQLite.

Its siblings over the same tables: ``turn_claim_store.py`` renews and gives back what a running turn holds
(the lease set here, its Idempotency-Key), ``conversation_reader.py`` reads for the history API.

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

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from chatcore.adapters.sqlalchemy import approvals as approval_sql
from chatcore.adapters.sqlalchemy import idempotency as keys
from chatcore.adapters.sqlalchemy import turn_statements as turn_sql
from chatcore.adapters.sqlalchemy.asyncpg_statements import AutocommittedStatements
from chatcore.adapters.sqlalchemy.errors import store_unavailable_on_outage
from chatcore.adapters.sqlalchemy.rows import (
    CONVERSATION_COLUMNS,
    LAST_SEQ,
    MESSAGE_COLUMNS,
    conversation_from_row,
    message_from_row,
    message_row,
    stored_message,
)
from chatcore.adapters.sqlalchemy.tables import TITLE_MAX_LENGTH, as_utc
from chatcore.adapters.sqlalchemy.tables import conversations as conversations_table
from chatcore.adapters.sqlalchemy.tables import messages as messages_table
from chatcore.adapters.sqlalchemy.tables import usage as usage_table
from chatcore.adapters.sqlalchemy.usage_store import usage_rows
from chatcore.errors import (
    ChatError,
    ConversationBusy,
    ConversationNotFound,
    LeaseLost,
    NothingToRegenerate,
    TurnStillOpen,
)
from chatcore.idempotency import IdempotentReply
from chatcore.model import (
    ChatMessage,
    Conversation,
    Message,
    MessageStatus,
    Role,
    ToolApproval,
    ToolDecision,
    TurnResumption,
    TurnStart,
    utcnow,
)
from chatcore.usage import ModelCall, recorded


class SqlAlchemyConversationStore:
    """A ``chatcore.ports.ConversationStore`` on an AsyncEngine from ``engine.create_engine``.

    ``clock`` stamps rows and judges lease and key expiry; every replica's clock should be NTP-synced
    (a skew of well under the lease is harmless).

    ``asyncpg_statements``: on PostgreSQL with asyncpg, the turn's statements run on asyncpg directly
    (see ``asyncpg_statements.py``); False keeps them in SQLAlchemy's execution layer, where cursor
    events (and so OpenTelemetry's SQL spans) see them.
    """

    def __init__(
        self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow, asyncpg_statements: bool = True
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._single_statement = engine.dialect.name == "postgresql"
        # A turn's statements on PostgreSQL are atomic one by one: run alone, they need no BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT") if self._single_statement else engine
        self._statements = AutocommittedStatements(
            engine,
            (
                turn_sql.CONTINUE,
                turn_sql.CONTINUE_TAKING_LEASE,
                turn_sql.CREATE,
                turn_sql.APPEND,
                turn_sql.APPEND_HOLDING,
            ),
            asyncpg_statements=asyncpg_statements,
        )

    async def _autocommitted(self, statement: Executable, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """One of the turn's prebuilt statements, run alone (so atomic by itself, no BEGIN/COMMIT): its rows."""
        return await self._statements.rows(statement, parameters)

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
        user_message = stored_message(message, conversation.id, 1, turn_id)
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
        user_message = stored_message(message, conversation.id, 1, turn_id)
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
        await connection.execute(insert(messages_table).values(message_row(user_message)))
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
        bump = lease.bump(require_closed=True).returning(*CONVERSATION_COLUMNS)
        found = (await connection.execute(bump, lease.parameters(user_id, conversation_id, by=1))).one_or_none()
        if found is None:
            raise await _missing_or(connection, user_id, conversation_id, ConversationBusy(), lease)
        seq: int = found.last_seq
        history = await _window(connection, conversation_id, before=seq, limit=history_limit)
        user_message = stored_message(message, conversation_id, seq, turn_id)
        await connection.execute(insert(messages_table).values(message_row(user_message)))
        return TurnStart(conversation_from_row(found), history, user_message, created=False)

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
        parameters |= turn_sql.message_parameters(stored_message(message, conversation_id, 0, turn_id))
        statement = turn_sql.CONTINUE if lease.until is None else turn_sql.CONTINUE_TAKING_LEASE
        rows = await self._autocommitted(statement, parameters)
        if not rows:
            raise await self._missing_or_busy(user_id, conversation_id, ConversationBusy(), lease)
        first = rows[0]
        seq: int = first[LAST_SEQ]
        history = turn_sql.window_messages(first[turn_sql.WINDOW])
        complete = list(range(max(seq - max(history_limit, 0), 1), seq))
        if [m.seq for m in history] != complete:
            async with self._autocommit.connect() as connection:
                history = await _window(connection, conversation_id, before=seq, limit=history_limit)
        return TurnStart(
            conversation_from_row(first),
            history,
            stored_message(message, conversation_id, seq, turn_id),
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
        usage: Sequence[ModelCall] = (),
    ) -> tuple[Message, ...]:
        now = self._clock()
        keep = _Lease(holder, now, None, opens=turn_id if approvals else None, close=close and not approvals)
        if messages and self._single_statement and not approvals and not close:  # a step: one statement
            return await self._append_alone(
                turn_sql.APPEND_HOLDING, user_id, conversation_id, messages, keep, turn_id, usage
            )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            stored = await self._append(connection, user_id, conversation_id, messages, keep, turn_id, usage)
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
        usage: Sequence[ModelCall] = (),
    ) -> tuple[Message, ...]:
        now = self._clock()
        holder = turn_id if holder is None else holder
        release = _Lease(holder, now, None, True, close=not keep_open)
        if messages and self._single_statement and idempotency is None and not keep_open:  # one statement
            return await self._append_alone(
                turn_sql.APPEND, user_id, conversation_id, messages, release, turn_id, usage
            )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            if messages and self._single_statement and not keep_open:
                stored = await self._append_in_one_statement(
                    connection, user_id, conversation_id, messages, release, turn_id, usage
                )
            else:
                stored = await self._append(connection, user_id, conversation_id, messages, release, turn_id, usage)
            if idempotency is not None and not await keys.complete(
                connection, user_id, idempotency, turn_id=holder, conversation_id=conversation_id, now=now
            ):
                raise LeaseLost()  # leaving the block rolls the messages back with it
            return stored

    async def _append_alone(
        self,
        statement: Executable,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        lease: _Lease,
        turn_id: uuid.UUID,
        usage: Sequence[ModelCall],
    ) -> tuple[Message, ...]:
        """One of the prebuilt appends (``APPEND``, ``APPEND_HOLDING``) run alone on autocommit: one round trip."""
        async with store_unavailable_on_outage():
            parameters = self._append_parameters(user_id, conversation_id, messages, lease, turn_id, usage)
            rows = await self._autocommitted(statement, parameters)
            if not rows:
                raise await self._missing_or_busy(user_id, conversation_id, LeaseLost())
            return _appended(messages, conversation_id, turn_id, rows)

    async def _append(
        self,
        connection: AsyncConnection,
        user_id: str,
        conversation_id: uuid.UUID,
        messages: Sequence[ChatMessage],
        lease: _Lease,
        turn_id: uuid.UUID,
        usage: Sequence[ModelCall] = (),
    ) -> tuple[Message, ...]:
        bump = lease.bump().returning(conversations_table.c.last_seq)
        parameters = lease.parameters(user_id, conversation_id, by=len(messages))
        last_seq = (await connection.execute(bump, parameters)).scalar_one_or_none()
        if last_seq is None:
            raise await _missing_or(connection, user_id, conversation_id, LeaseLost())
        first = last_seq - len(messages) + 1
        stored = tuple(stored_message(m, conversation_id, first + i, turn_id) for i, m in enumerate(messages))
        if stored:
            await connection.execute(insert(messages_table).values([message_row(m) for m in stored]))
        if usage:
            await connection.execute(
                insert(usage_table), usage_rows(recorded(user_id, conversation_id, turn_id, usage))
            )
        return stored

    async def _append_in_one_statement(
        self,
        connection: AsyncConnection,
        user_id: str,
        conversation_id: uuid.UUID,
        batch: Sequence[ChatMessage],
        release: _Lease,
        turn_id: uuid.UUID,
        usage: Sequence[ModelCall],
    ) -> tuple[Message, ...]:
        """``finish_turn`` as one PostgreSQL statement, in the caller's transaction."""
        parameters = self._append_parameters(user_id, conversation_id, batch, release, turn_id, usage)
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
        bump = lease.bump().returning(*CONVERSATION_COLUMNS, conversations_table.c.open_turn_id)
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            found = (await connection.execute(bump, lease.parameters(user_id, conversation_id, by=0))).one_or_none()
            if found is None:
                raise await _missing_or(connection, user_id, conversation_id, ConversationBusy(), lease)
            turn = await _turn_messages(connection, conversation_id, turn_id)
            before = turn[0].seq if turn else found.last_seq + 1
            history = await _window(connection, conversation_id, before=before, limit=history_limit)
            approvals = await approval_sql.of_turn(connection, conversation_id, turn_id)
        return TurnResumption(
            conversation=conversation_from_row(found),
            turn_id=turn_id,
            open=found.open_turn_id == turn_id,
            history=history,
            turn=turn,
            approvals=approvals,
        )

    @staticmethod
    def _append_parameters(
        user_id: str,
        conversation_id: uuid.UUID,
        batch: Sequence[ChatMessage],
        lease: _Lease,
        turn_id: uuid.UUID,
        usage: Sequence[ModelCall],
    ) -> dict[str, Any]:
        """Bump ``last_seq`` by n and insert n rows of turn ``turn_id`` numbered below it, ``lease.turn_id`` holding,
        and the ``usage`` rows of the calls that produced them.

        The rows travel as one array per column through ``unnest``, so the SQL text is the
        same for every batch size and asyncpg reuses one prepared statement.
        """
        parameters = turn_sql.bump_parameters(user_id, conversation_id, lease.turn_id, now=lease.now, by=len(batch))
        parameters["p_turn_id"] = turn_id
        parameters |= turn_sql.batch_parameters([stored_message(m, conversation_id, 0, turn_id) for m in batch])
        parameters |= turn_sql.usage_parameters(usage)
        return parameters

    async def begin_regeneration(
        self,
        user_id: str,
        conversation_id: uuid.UUID,
        *,
        turn_id: uuid.UUID,
        history_limit: int,
        lease_seconds: float | None = None,
    ) -> TurnStart:
        """A few statements in one transaction (a rare request: no single-statement path); leaving it on an error
        rolls the lease back too."""
        now = self._clock()
        lease = _Lease(turn_id, now, None if lease_seconds is None else now + timedelta(seconds=lease_seconds))
        columns = messages_table.c
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            bump = lease.bump(require_closed=True).returning(*CONVERSATION_COLUMNS)
            found = (await connection.execute(bump, lease.parameters(user_id, conversation_id, by=0))).one_or_none()
            if found is None:
                raise await _missing_or(connection, user_id, conversation_id, ConversationBusy(), lease)
            last_user = (
                await connection.execute(
                    select(*MESSAGE_COLUMNS)
                    .where(
                        columns.conversation_id == conversation_id,
                        columns.role == Role.USER.value,
                        columns.status != MessageStatus.SUPERSEDED.value,
                    )
                    .order_by(columns.seq.desc())
                    .limit(1)
                )
            ).one_or_none()
            if last_user is None:
                raise NothingToRegenerate()
            user_message = message_from_row(last_user._mapping)
            await connection.execute(
                update(messages_table)
                .where(
                    columns.conversation_id == conversation_id,
                    columns.seq > user_message.seq,
                    columns.status != MessageStatus.SUPERSEDED.value,
                )
                .values(status=MessageStatus.SUPERSEDED.value)
            )
            await connection.execute(  # the message belongs to the turn that answers it now
                update(messages_table)
                .where(columns.id == user_message.id)
                .values(status=MessageStatus.COMPLETE.value, turn_id=turn_id)
            )
            user_message = replace(user_message, status=MessageStatus.COMPLETE, turn_id=turn_id)
            history = await _window(connection, conversation_id, before=user_message.seq, limit=history_limit)
        return TurnStart(conversation_from_row(found), history, user_message, created=False)

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
        held = turn_sql.HELD_BY.values(updated_at=conversations_table.c.updated_at)
        now = self._clock()
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            # Locks the conversation row while its lease is ours: no one takes the lease over mid-way.
            locked = await connection.execute(held, turn_sql.held_by_parameters(user_id, conversation_id, holder))
            if locked.rowcount != 1:
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

    async def rename(self, user_id: str, conversation_id: uuid.UUID, title: str) -> Conversation:
        statement = (
            update(conversations_table)
            .where(conversations_table.c.id == conversation_id, conversations_table.c.user_id == user_id)
            .values(title=title[:TITLE_MAX_LENGTH])
            .returning(*CONVERSATION_COLUMNS)
        )
        async with store_unavailable_on_outage(), self._engine.begin() as connection:
            found = (await connection.execute(statement)).one_or_none()
        if found is None:
            raise ConversationNotFound()
        return conversation_from_row(found)

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
    return tuple(stored_message(m, conversation_id, first + i, turn_id) for i, m in enumerate(batch))


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
        select(*MESSAGE_COLUMNS).where(conversation, messages_table.c.turn_id == turn_id).order_by(messages_table.c.seq)
    )
    return tuple(message_from_row(row._mapping) for row in (await connection.execute(statement)).all())


async def _window(
    connection: AsyncConnection, conversation_id: uuid.UUID, *, before: int, limit: int
) -> tuple[Message, ...]:
    """The last ``limit`` messages below seq ``before``, oldest first: a backward scan of the unique index."""
    if limit <= 0:
        return ()
    statement = (
        select(*MESSAGE_COLUMNS)
        .where(messages_table.c.conversation_id == conversation_id, messages_table.c.seq < before)
        .order_by(messages_table.c.seq.desc())
        .limit(limit)
    )
    rows = (await connection.execute(statement)).all()
    return tuple(message_from_row(row._mapping) for row in reversed(rows))


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

    def bump(self, *, require_closed: bool = False) -> Update:
        """``turn_statements.bump``: the one UPDATE that reserves seqs and takes or gives back the lease."""
        return turn_sql.bump(
            take_lease=self.until is not None,
            release=self.release,
            opens=self.opens is not None,
            close=self.close,
            require_closed=require_closed,
        )

    def parameters(self, user_id: str, conversation_id: uuid.UUID, *, by: int) -> dict[str, Any]:
        parameters = turn_sql.bump_parameters(
            user_id, conversation_id, self.turn_id, now=self.now, by=by, lease_until=self.until
        )
        if self.opens is not None:
            parameters["p_opens"] = self.opens
        return parameters


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
