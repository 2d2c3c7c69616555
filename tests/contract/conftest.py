"""One parametrization of the store backends for every store contract suite: in memory, SQLite, PostgreSQL.

A suite asks for ``stores`` (the conversation ports over one database), ``store``/``claims``/``reader``/``events``
(one of them), or ``task_store``; each runs once per backend. ``@pytest.mark.postgres_core`` on a module adds
PostgreSQL with the turn's statements through SQLAlchemy Core instead of asyncpg directly (what tracing uses).
The SQL backends share one database per session, so every test works with fresh user ids.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chatcore.adapters.todo.memory_store import InMemoryTaskStore
from chatcore.adapters.todo.ports import TaskStore
from chatcore.adapters.todo.sqlalchemy_store import SqlAlchemyTaskStore
from chatcore.model import utcnow
from chatcore.ports import ConversationReader, ConversationStore, TurnClaimStore, TurnEventStore
from tests.stores import ConversationStores, in_memory, on_engine

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
WITH_POSTGRES_CORE = [*BACKENDS, pytest.param("postgres-core", marks=pytest.mark.integration)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        core = metafunc.definition.get_closest_marker("postgres_core") is not None
        metafunc.parametrize("backend", WITH_POSTGRES_CORE if core else BACKENDS, indirect=True)


class Clock:
    """Real time that a test can move forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def stores(backend: str, clock: Clock, request: pytest.FixtureRequest) -> ConversationStores:
    if backend == "memory":
        return in_memory(clock=clock)
    engine = request.getfixturevalue("sqlite_engine" if backend == "sqlite" else "pg_engine")
    return on_engine(engine, clock=clock, asyncpg_statements=backend != "postgres-core")


@pytest.fixture
def store(stores: ConversationStores) -> ConversationStore:
    return stores.store


@pytest.fixture
def claims(stores: ConversationStores) -> TurnClaimStore:
    return stores.claims


@pytest.fixture
def reader(stores: ConversationStores) -> ConversationReader:
    return stores.reader


@pytest.fixture
def events(stores: ConversationStores) -> TurnEventStore:
    return stores.events


@pytest.fixture
def task_store(backend: str, request: pytest.FixtureRequest) -> TaskStore:
    if backend == "memory":
        return InMemoryTaskStore()
    return SqlAlchemyTaskStore(request.getfixturevalue("sqlite_engine" if backend == "sqlite" else "pg_engine"))
