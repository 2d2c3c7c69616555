"""Where database errors cross into the domain: connection-level failures become StoreUnavailable.

Everything else (a constraint violation, a bad statement) is a bug, not an outage, and
propagates unchanged so it is not retried as if the database were down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy import exc

from chatcore.errors import StoreUnavailable

logger = logging.getLogger("chatcore.adapters.sqlalchemy")

_ASYNCPG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full, out of memory
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, recovery, statement_timeout
    asyncpg.exceptions.InvalidCatalogNameError,  # the configured database does not exist
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # the configured credentials are refused
    asyncpg.exceptions.InterfaceError,  # the client side of the connection is closed or broken
)

_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, *_ASYNCPG_UNAVAILABLE)
"""OSError covers a refused or reset socket and a connect timeout (TimeoutError is an OSError)."""


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot serve requests now (worth a retry), not a bug.

    The causes count too: a connection refused while the pool opens it (PostgreSQL's "too many clients
    already") reaches a caller of the raw pool as the dialect's own DBAPI error, unwrapped by SQLAlchemy,
    with asyncpg's error as its ``__cause__``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if _is_unavailable_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _is_unavailable_itself(error: BaseException) -> bool:
    if isinstance(error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        try:
            driver_error: BaseException = error.driver_exception
        except ValueError:
            return False
        return isinstance(driver_error, _UNAVAILABLE)
    return isinstance(error, _UNAVAILABLE)


@asynccontextmanager
async def store_unavailable_on_outage() -> AsyncIterator[None]:
    """Re-raise connection-level failures in the block as StoreUnavailable.

    The detail is the fixed default: a SQLAlchemy message carries the statement, its
    parameters (user text) and sometimes the host, none of which may reach a client. The
    log line names only the exception types for the same reason.
    """
    try:
        yield
    except Exception as error:
        if not is_unavailable(error):
            raise
        driver = getattr(error, "orig", None)
        logger.warning(
            "database unavailable: %s%s",
            type(error).__name__,
            f" ({type(driver).__name__})" if driver is not None else "",
            extra={"event": "store_unavailable"},
        )
        raise StoreUnavailable() from error
