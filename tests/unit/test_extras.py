"""A setting or command whose extra is missing says which extra to install, and the CLI exits without a traceback.

Every extra is installed in the test environment; a module set to ``None`` in ``sys.modules`` is what Python
itself reports as not importable, so each case hides one extra's module for the length of the test.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from chatcore.entrypoints.cli import main
from chatcore.entrypoints.container import build_container
from chatcore.entrypoints.extras import EXTRA_MODULES, MissingExtra, require_extra, require_extras
from chatcore.entrypoints.settings import Settings

SECRET = "s" * 32
MCP_SERVERS = json.dumps([{"name": "time", "command": ["mcp-server-time"]}])


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("BETTER_AUTH_", "CHATCORE_", "OPENAI_", "ANTHROPIC_", "OTEL_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    ("env", "hidden", "message"),
    [
        ({}, "litestar", "chatcore serve needs the server extra: pip install 'chatcore[server]'"),
        ({}, "uvicorn", "chatcore serve needs the server extra: pip install 'chatcore[server]'"),
        (
            {"CHATCORE_LLM": "openai", "OPENAI_API_KEY": "sk-test"},
            "openai",
            "CHATCORE_LLM=openai needs the openai extra: pip install 'chatcore[openai]'",
        ),
        (
            {"OPENAI_API_KEY": "sk-test"},  # chosen by the key, not named
            "openai",
            "CHATCORE_LLM=openai needs the openai extra: pip install 'chatcore[openai]'",
        ),
        (
            {"CHATCORE_LLM": "anthropic", "ANTHROPIC_API_KEY": "sk-ant-test"},
            "anthropic",
            "CHATCORE_LLM=anthropic needs the anthropic extra: pip install 'chatcore[anthropic]'",
        ),
        (
            {"CHATCORE_MCP_SERVERS": MCP_SERVERS},
            "mcp",
            "CHATCORE_MCP_SERVERS needs the mcp extra: pip install 'chatcore[mcp]'",
        ),
        (
            {"CHATCORE_REDIS_URL": "redis://127.0.0.1:6379/0", "CHATCORE_RATE_LIMIT": "30/minute"},
            "redis",
            "CHATCORE_REDIS_URL needs the redis extra: pip install 'chatcore[redis]'",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
            "opentelemetry.sdk",
            "OTEL_EXPORTER_OTLP_ENDPOINT needs the otel extra: pip install 'chatcore[otel]'",
        ),
    ],
)
def test_serve_names_the_missing_extra_and_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], hidden: str, message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    hide(monkeypatch, hidden)

    assert main(["serve", "--no-migrate"]) == 2

    captured = capsys.readouterr()
    assert captured.err.strip() == f"chatcore: {message}"
    assert captured.out == ""


def test_mcp_serve_names_the_mcp_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    hide(monkeypatch, "mcp")
    assert main(["mcp-serve"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "chatcore: chatcore mcp-serve needs the mcp extra: pip install 'chatcore[mcp]'"
    )


def test_an_app_built_from_settings_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """``create_app(build_container(settings))`` in a host's own code: the same message, as ``MissingExtra``."""
    hide(monkeypatch, "anthropic")
    settings = Settings(llm="anthropic", anthropic_api_key="sk-ant-test", auth_secret=SECRET)
    with pytest.raises(MissingExtra, match=r"CHATCORE_LLM=anthropic needs the anthropic extra") as raised:
        build_container(settings)
    assert raised.value.extra == "anthropic"
    assert isinstance(raised.value, ImportError)


def test_installed_extras_pass() -> None:
    for extra in EXTRA_MODULES:
        require_extra(extra, "this test")
    require_extras(
        Settings(
            llm="openai",
            openai_api_key="sk-test",
            mcp_servers=MCP_SERVERS,
            redis_url="redis://127.0.0.1:6379/0",
            otlp_traces_endpoint="http://127.0.0.1:4318/v1/traces",
        )
    )


def test_the_offline_defaults_need_no_extra_beyond_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for extra, modules in EXTRA_MODULES.items():
        if extra != "server":
            hide(monkeypatch, *modules)
    require_extras(Settings())  # offline agent, no MCP, no Redis, no tracing


def test_the_hosting_api_names_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatcore.entrypoints.http as http

    hide(monkeypatch, "litestar")
    with pytest.raises(MissingExtra, match=r"chatcore.entrypoints.http.ChatcorePlugin needs the server extra"):
        _ = http.ChatcorePlugin


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CHATCORE_DB_SCHEMA": "chat"}, "needs PostgreSQL"),  # the default database is a SQLite file
        ({"CHATCORE_DB_SCHEMA": "Chat", "DATABASE_URL": "postgresql://db/app"}, "lower-case letters"),
    ],
)
def test_a_database_schema_is_checked_with_the_settings(env: dict[str, str], problem: str) -> None:
    from chatcore.entrypoints.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"CHATCORE_DB_SCHEMA: .*{problem}"):
        Settings.from_env(env)
    assert Settings.from_env({"CHATCORE_DB_SCHEMA": "chat", "DATABASE_URL": "postgresql://db/app"}).db_schema == "chat"
