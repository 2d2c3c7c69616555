"""Run the schema migrations from code: ``chatcore migrate``, app start-up, and test fixtures.

The alembic ``Config`` is built here rather than read from an alembic.ini, so
migrations work from an installed wheel and from any working directory.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

from chatcore.adapters.sqlalchemy.engine import database_url_from

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_ALEMBIC_LOCK = threading.Lock()
"""Alembic keeps the running environment in module globals (``alembic.context``), so one process migrates
one database at a time; separate processes (replicas) are serialised by an advisory lock in env.py instead."""


def alembic_config(url: str) -> Config:
    """An alembic Config for ``url``, pointing at the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # Through attributes, not set_main_option: ConfigParser would choke on a password's "%".
    config.attributes["url"] = database_url_from(url)
    return config


def run_migrations(url: str) -> None:
    """Bring the database at ``url`` to the newest revision; a no-op when it is already there.

    Synchronous and runs its own event loop: call ``run_migrations_async`` from async code.
    """
    config = alembic_config(url)
    with _ALEMBIC_LOCK:
        command.upgrade(config, "head")


async def run_migrations_async(url: str) -> None:
    """``run_migrations`` in a worker thread, which can start the event loop alembic's async env needs."""
    await asyncio.to_thread(run_migrations, url)
