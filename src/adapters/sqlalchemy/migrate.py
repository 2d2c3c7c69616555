"""Run the schema migrations from code: ``chatcore migrate``, app start-up, a host app, and test fixtures.

The alembic ``Config`` is built here rather than read from an alembic.ini, so
migrations work from an installed wheel and from any working directory.

chatcore's history lives in its own version table, ``chatcore_alembic_version``, so it coexists with the
migrations of an application that hosts chatcore in the same database (whose Alembic keeps ``alembic_version``).
With ``schema`` (PostgreSQL), chatcore's tables and that version table live in that schema, created when
missing. A database migrated before the version table had its own name keeps working: when
``alembic_version`` holds one of chatcore's revisions and ``chatcore_alembic_version`` does not exist yet,
the revision is carried over and the old table dropped (env.py); an ``alembic_version`` holding any other
revision is the host's and is left alone.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chatcore.adapters.sqlalchemy.engine import check_schema, database_url_from

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_ALEMBIC_LOCK = threading.Lock()
"""Alembic keeps the running environment in module globals (``alembic.context``), so one process migrates
one database at a time; separate processes (replicas) are serialised by an advisory lock in env.py instead."""


VERSION_TABLE = "chatcore_alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"
"""Where chatcore kept its revision before it had a version table of its own (Alembic's default name)."""


def alembic_config(url: str, *, schema: str | None = None) -> Config:
    """An alembic Config for ``url`` (and ``schema``), pointing at the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # Through attributes, not set_main_option: ConfigParser would choke on a password's "%".
    config.attributes["url"] = database_url_from(url)
    config.attributes["schema"] = check_schema(schema, config.attributes["url"])
    return config


def run_migrations(url: str, *, schema: str | None = None) -> None:
    """Bring the database at ``url`` (chatcore's tables in ``schema``) to the newest revision; a no-op when it is
    already there.

    Synchronous and runs its own event loop: call ``run_migrations_async`` from async code.
    """
    config = alembic_config(url, schema=schema)
    with _ALEMBIC_LOCK:
        command.upgrade(config, "head")


async def run_migrations_async(url: str, *, schema: str | None = None) -> None:
    """``run_migrations`` in a worker thread, which can start the event loop alembic's async env needs."""
    await asyncio.to_thread(run_migrations, url, schema=schema)


async def run_migrations_on(engine: AsyncEngine, *, schema: str | None = None) -> None:
    """``run_migrations`` through an engine the caller owns (a host application's), on one of its connections."""
    config = alembic_config(engine.url.render_as_string(hide_password=False), schema=schema)
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade_on, config)


def _upgrade_on(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection  # env.py migrates on it instead of opening its own
    with _ALEMBIC_LOCK:
        command.upgrade(config, "head")
