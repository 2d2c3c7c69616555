"""AsyncpgStatement: the turn's statements compiled once for asyncpg bind exactly what SQLAlchemy would.

The stores' contract suites run on PostgreSQL both ways ("postgres" on asyncpg directly, "postgres-core"
through SQLAlchemy's execution layer); this pins the compilation itself, without a database.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, column, select, table
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from chatcore.adapters.sqlalchemy import turn_statements as turn_sql
from chatcore.adapters.sqlalchemy.asyncpg_statements import AsyncpgStatement
from chatcore.model import ChatMessage, Message, MessageStatus, Role

DIALECT = asyncpg_dialect()


def _user_message(conversation_id: uuid.UUID) -> Message:
    now = datetime.now(UTC)
    chat = ChatMessage(role=Role.USER, content="Buy milk")
    return Message(
        id=uuid.uuid4(),
        role=chat.role,
        content=chat.content,
        created_at=now,
        conversation_id=conversation_id,
        seq=1,
        status=MessageStatus.COMPLETE,
        turn_id=uuid.uuid4(),
    )


def test_create_binds_the_values_sqlalchemy_would_positionally() -> None:
    conversation_id, turn_id = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    parameters = turn_sql.bump_parameters("alice", conversation_id, turn_id, now=now, by=1, lease_until=now)
    parameters["p_title"] = "Groceries"
    parameters |= turn_sql.message_parameters(_user_message(conversation_id))

    statement = AsyncpgStatement.compile(turn_sql.CREATE, DIALECT)
    compiled = turn_sql.CREATE.compile(dialect=DIALECT)
    expected_values = compiled.construct_params(parameters)
    expected = [
        compiled._bind_processors[name](expected_values[name])  # type: ignore[operator]
        if name in compiled._bind_processors
        else expected_values[name]
        for name in compiled.positiontup or ()
    ]

    assert statement.sql == compiled.string
    assert statement.arguments(parameters) == expected
    assert 1 in statement.arguments(parameters)  # ``last_seq=1``, a value given when the statement was built


def test_every_turn_statement_compiles_and_numbers_each_parameter_once() -> None:
    for built in (turn_sql.CONTINUE, turn_sql.CONTINUE_TAKING_LEASE, turn_sql.CREATE, turn_sql.APPEND):
        statement = AsyncpgStatement.compile(built, DIALECT)
        names = [name for name, _, _ in statement.bindings]
        assert len(names) == len(set(names))
        assert f"${len(names)}::" in statement.sql
        assert f"${len(names) + 1}::" not in statement.sql


def test_a_none_json_value_goes_through_sqlalchemys_processor_like_any_other() -> None:
    statement = AsyncpgStatement.compile(turn_sql.CREATE, DIALECT)
    position = [name for name, _, _ in statement.bindings].index("m_tool_calls")
    _, _, process = statement.bindings[position]
    assert process is not None
    conversation_id = uuid.uuid4()
    parameters = turn_sql.message_parameters(_user_message(conversation_id))
    assert statement.arguments(parameters)[position] == process(None)


def test_statements_whose_sql_depends_on_the_values_are_refused() -> None:
    items = table("items", column("id"))
    expanding = select(items.c.id).where(items.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="execution time"):
        AsyncpgStatement.compile(expanding, DIALECT)
