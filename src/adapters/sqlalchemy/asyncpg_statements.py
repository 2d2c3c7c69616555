"""The turn's prebuilt statements run on asyncpg itself: compiled once, bound by position, no result layer.

Every chat turn runs two of ``turn_statements``' statements. Through ``AsyncConnection.execute``
each one passes SQLAlchemy's execution context, its DBAPI cursor adapter (in a greenlet), and its
result layer, which together cost more CPU than asyncpg's own work and the rest of the store's
(measured in docs/performance.md). The statements are fixed, so the SQL text, the order of its
``$n`` parameters, their build-time values and SQLAlchemy's own bind processors (JSON, the UTC
timestamp type, arrays) are taken from one compilation against the engine's dialect; a turn then
only binds values and calls asyncpg's ``fetch`` on the pooled connection's driver connection, so the
pool, its liveness checks and the connection's JSON codecs are still SQLAlchemy's. Rows come back as
asyncpg ``Record``s, read by position like the Core path's rows.

Statements run this way do not fire SQLAlchemy's cursor events; asyncpg's query logger sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import SchemaTranslateMapType as SchemaTranslateMap
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from chatcore.adapters.sqlalchemy.errors import is_unavailable


@dataclass(frozen=True, slots=True)
class AsyncpgStatement:
    """One statement as asyncpg takes it: SQL text, and how to turn named parameters into positional ones."""

    sql: str
    bindings: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    """Per ``$n``, in order: the parameter's name, its value when none is given, SQLAlchemy's bind processor."""

    @classmethod
    def compile(
        cls, statement: ClauseElement, dialect: Dialect, schema_translate_map: SchemaTranslateMap | None = None
    ) -> AsyncpgStatement:
        """``schema_translate_map``: the engine's (``engine.in_schema``), rendered into the SQL text once."""
        compiled = (
            statement.compile(dialect=dialect, schema_translate_map=schema_translate_map, render_schema_translate=True)
            if schema_translate_map
            else statement.compile(dialect=dialect)
        )
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            raise ValueError(f"{dialect.name}+{dialect.driver} does not compile to positional parameters")
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("statements with parameters rendered at execution time cannot be precompiled")
        bindings = []
        for name in compiled.positiontup:
            process = compiled._bind_processors.get(name)
            if process is not None and not callable(process):  # a tuple type's per-element processors
                raise ValueError(f"parameter {name!r} has a composite type, which is not supported here")
            bindings.append((name, compiled.binds[name].effective_value, process))
        return cls(compiled.string, tuple(bindings))

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """Positional values; like SQLAlchemy, a processor sees every value, None included (JSON turns it into null)."""
        return [
            value if process is None else process(value)
            for name, default, process in self.bindings
            for value in (parameters.get(name, default),)
        ]


def compile_all(
    statements: Sequence[ClauseElement], dialect: Dialect, schema_translate_map: SchemaTranslateMap | None = None
) -> dict[int, AsyncpgStatement]:
    """``AsyncpgStatement``s keyed by the statement's ``id`` (statements are module-level constants)."""
    return {id(each): AsyncpgStatement.compile(each, dialect, schema_translate_map) for each in statements}


class AutocommittedStatements:
    """Prebuilt statements (module-level constants) run alone on autocommit, so atomic by themselves: no BEGIN or
    COMMIT around them. On PostgreSQL with asyncpg (and ``asyncpg_statements``) they go to asyncpg directly, on a
    connection checked out of the engine's pool without a SQLAlchemy ``Connection`` around it (the checkout still
    runs the pool's liveness checks); otherwise, and for any other statement, through an autocommit ``Connection``.
    """

    def __init__(self, engine: AsyncEngine, statements: Sequence[ClauseElement], *, asyncpg_statements: bool = True):
        self._sync_engine = engine.sync_engine  # its pool is read at each use: ``dispose()`` replaces it
        postgresql = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT") if postgresql else engine
        self._asyncpg: dict[int, AsyncpgStatement] = {}
        if asyncpg_statements and postgresql and engine.dialect.driver == "asyncpg":
            schema_translate_map = engine.get_execution_options().get("schema_translate_map")  # tables in a schema
            self._asyncpg = compile_all(statements, engine.dialect, schema_translate_map)

    async def rows(self, statement: Executable, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """The statement's rows, read by position."""
        prepared = self._asyncpg.get(id(statement))
        if prepared is None:
            async with self._autocommit.connect() as connection:
                return (await connection.execute(statement, dict(parameters))).all()
        pooled = await greenlet_spawn(self._sync_engine.pool.connect)
        try:
            asyncpg_connection: Any = pooled.driver_connection  # set while checked out
            rows: Sequence[Sequence[Any]] = await asyncpg_connection.fetch(
                prepared.sql, *prepared.arguments(parameters)
            )
        except BaseException as error:
            # SQLAlchemy did not see it fail: a broken connection, or one whose statement was cut short (the task
            # cancelled mid-query), must not go back to the pool. Outside a greenlet, invalidating terminates the
            # connection without awaiting, so it runs even while this task is being cancelled.
            if not isinstance(error, Exception) or is_unavailable(error):
                with contextlib.suppress(Exception):
                    pooled.invalidate(error if isinstance(error, Exception) else None)
                raise
            await greenlet_spawn(pooled.close)
            raise
        # In a greenlet: giving it back may close it (an overflow connection finding the pool full), which awaits;
        # outside one that would raise MissingGreenlet.
        await greenlet_spawn(pooled.close)
        return rows
