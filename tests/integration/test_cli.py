"""The chatcore command as a user runs it: a real server process on PostgreSQL, spoken to over TCP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

CHATCORE = shutil.which("chatcore", path=str(Path(sys.executable).parent)) or "chatcore"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BETTER_AUTH_", "CHATCORE_", "OPENAI_", "ANTHROPIC_"))
    }
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHATCORE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def server(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = clean_env(DATABASE_URL=postgres_url, BETTER_AUTH_SECRET="cli-test-secret-0123456789abcdef")
    process = subprocess.Popen(
        [CHATCORE, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            process.kill()
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"chatcore serve did not start:\n{output}")
        yield base, env
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_migrate_and_token_work_together(server: tuple[str, dict[str, str]]) -> None:
    base, env = server
    assert run("migrate", env=env).returncode == 0
    minted = run("token", "--user-id", "cli-user", "--email", "cli@example.com", "--ttl", "600", env=env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    added = httpx.post(f"{base}/api/cli-user/chat", json={"message": "Add a task to buy milk"}, headers=headers)
    assert added.status_code == 200, added.text
    conversation_id = added.json()["conversation_id"]
    listed = httpx.post(
        f"{base}/api/cli-user/chat",
        json={"message": "Show me all my tasks", "conversation_id": conversation_id},
        headers=headers,
    )
    assert listed.status_code == 200
    assert "Buy milk" in listed.json()["response"]
    assert httpx.get(f"{base}/ready").status_code == 200


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    result = run("serve", "--port", str(free_port()), env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "BETTER_AUTH_SECRET" in result.stderr
    assert "--dev" in result.stderr


def test_token_without_a_secret_is_a_clear_error(tmp_path: Path) -> None:
    result = run("token", "--user-id", "u", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "BETTER_AUTH_SECRET" in result.stderr


def test_dev_mode_on_embedded_defaults_prints_a_working_token(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [CHATCORE, "serve", "--dev", "--port", str(port)],
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = ""
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not token:
            line = process.stdout.readline()
            if line.strip().startswith("ey"):
                token = line.strip()
        assert token, "no demo token printed"
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        reply = httpx.post(
            f"{base}/api/demo-user/chat",
            json={"message": "Add a task to buy milk"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["tool_calls"][0]["name"] == "add_task"
        assert (tmp_path / "chatcore.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_mcp_serve_requires_a_bearer_token(postgres_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(DATABASE_URL=postgres_url, BETTER_AUTH_SECRET="cli-test-secret-0123456789abcdef")
    process = subprocess.Popen(
        [CHATCORE, "mcp-serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response is not None, "mcp-serve did not start"
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    finally:
        process.terminate()
        process.wait(timeout=20)
