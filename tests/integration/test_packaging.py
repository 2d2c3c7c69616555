"""The distribution: what the wheel ships, and that ``pip install chatcore`` alone is a working library.

The bare wheel is installed with its declared dependencies (resolved from the machine's package index, pip's
own wheel cache reused) into a new virtual environment that sees none of this one's packages. A turn with the
fakes and a function tool runs there, in memory and on SQLite, and the commands that need an extra say which
one instead of failing with a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("litestar", "uvicorn", "openai", "anthropic", "mcp", "redis", "structlog", "dependency_injector")
"""What a library user must not get with ``import chatcore``: the server's and the optional SDKs' modules."""

NOT_IN_BARE_INSTALL = (
    "litestar",
    "uvicorn",
    "openai",
    "anthropic",
    "mcp",
    "redis",
    "structlog",
    "dependency-injector",
    "prometheus-client",
    "aiohttp",
    "httpx2",
)
"""Distributions only the extras bring."""

LIBRARY_TURN = textwrap.dedent(
    """
    import asyncio, json, sys

    import chatcore, chatcore.fakes
    heavy = sys.argv[2].split(",")
    loaded_by_import = sorted({name.split(".")[0] for name in sys.modules} & set(heavy))

    from chatcore import ChatService, Principal
    from chatcore.adapters.sqlalchemy.conversation_store import SqlAlchemyConversationStore
    from chatcore.adapters.sqlalchemy.turn_claim_store import SqlAlchemyTurnClaimStore
    from chatcore.adapters.sqlalchemy.engine import create_engine
    from chatcore.adapters.sqlalchemy.migrate import run_migrations
    from chatcore.fakes import InMemoryConversationStore, InMemoryTurnClaimStore, ScriptedAgent, StaticTokenVerifier
    from chatcore.model import AgentResponse, ToolCall
    from chatcore.tools import FunctionToolRegistry, tool

    @tool
    def add(principal: Principal, a: int, b: int) -> dict[str, object]:
        '''Add two numbers.'''
        return {"sum": a + b, "for": principal.user_id}

    async def turn(store, claims):
        tools = FunctionToolRegistry([add])
        [spec] = await tools.list_tools()
        agent = ScriptedAgent(
            [AgentResponse("", tool_calls=(ToolCall("call-1", "add", {"a": 2, "b": 3}),)), AgentResponse("5")]
        )
        verifier = StaticTokenVerifier()
        token = verifier.issue("alice")
        service = ChatService(store=store, claims=claims, agent=agent, verifier=verifier, tools=tools)
        reply = await service.chat(token, "alice", "What is 2 + 3?")
        # A second turn in the same conversation: the model sees the first one as the store kept it.
        await service.chat(token, "alice", "Thanks", reply.conversation_id)
        return {
            "schema": spec.parameters,
            "response": reply.response,
            "tool_results": [call.result for call in reply.tool_calls],
            "stored_roles": [message.role for message in agent.requests[-1].messages],
        }

    async def on_sqlite(url):
        engine = create_engine(url)
        try:
            return await turn(SqlAlchemyConversationStore(engine), SqlAlchemyTurnClaimStore(engine))
        finally:
            await engine.dispose()

    url = "sqlite+aiosqlite:///" + sys.argv[1]
    memory = InMemoryConversationStore()
    run_migrations(url)
    print(json.dumps({
        "loaded_by_import": loaded_by_import,
        "loaded_by_turns": sorted({name.split(".")[0] for name in sys.modules} & set(heavy)),
        "memory": asyncio.run(turn(memory, InMemoryTurnClaimStore(memory.database))),
        "sqlite": asyncio.run(on_sqlite(url)),
    }))
    """
)


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources: an in-tree build would ship whatever a stale build/ holds."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    directory = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        directory,
        source,
        cwd=source,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [path] = directory.glob("chatcore-*.whl")
    return path


@pytest.fixture(scope="module")
def bare_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment (no system site-packages) with ``pip install chatcore`` and nothing else."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    created = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one (``--python``) and resolves the wheel's declared
    # dependencies there, from the package index as a user's ``pip install`` would.
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel, cwd=venv.parent)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _bare_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment a user's shell would give the venv's commands: none of this test run's settings."""
    keep = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "PATH": f"{venv / 'bin'}{os.pathsep}{keep.get('PATH', '')}", **extra}


def test_wheel_installs_beside_pypi_entrypoints(wheel: Path, tmp_path: Path) -> None:
    """The wheel ships chatcore only: no top-level "adapters" or "entrypoints" to shadow PyPI packages."""
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"chatcore", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "chatcore/adapters/sqlalchemy/migrations/script.py.mako" in names
    assert "chatcore/py.typed" in names
    # Every module of the source tree is shipped (pyproject.toml lists the packages one by one).
    folders = {
        "chatcore": "src/chatcore",
        "chatcore/adapters": "src/adapters",
        "chatcore/entrypoints": "src/entrypoints",
    }
    for prefix, folder in folders.items():
        for module in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in module.parts and (module.parent / "__init__.py").exists():
                assert f"{prefix}/{module.relative_to(ROOT / folder).as_posix()}" in names

    target = tmp_path / "site"
    installed = _run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import entrypoints, chatcore.entrypoints.cli, chatcore.adapters.sqlalchemy.tables;"
        "assert hasattr(entrypoints, 'get_group_all'), entrypoints.__file__;"
        "assert chatcore.__file__.startswith(sys.argv[1]), chatcore.__file__;"
        "print('ok')"
    )
    result = _run(sys.executable, "-c", probe, target, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def test_bare_install_brings_no_extra(bare_venv: Path) -> None:
    listed = _run(
        bare_venv / "bin" / "python",
        "-c",
        "import importlib.metadata as m, json;"
        "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
        cwd=bare_venv,
    )
    assert listed.returncode == 0, listed.stderr
    distributions = set(json.loads(listed.stdout))
    assert {"chatcore", "sqlalchemy", "alembic", "asyncpg", "aiosqlite", "msgspec", "pyjwt"} <= distributions
    assert distributions.isdisjoint(NOT_IN_BARE_INSTALL), distributions & set(NOT_IN_BARE_INSTALL)


def test_bare_install_runs_a_turn_with_the_fakes_and_on_sqlite(bare_venv: Path, tmp_path: Path) -> None:
    done = _run(
        bare_venv / "bin" / "python",
        "-c",
        LIBRARY_TURN,
        tmp_path / "chatcore.db",
        ",".join(HEAVY),
        cwd=tmp_path,
        env=_bare_env(bare_venv),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded_by_import"] == []
    assert report["loaded_by_turns"] == []
    for store in ("memory", "sqlite"):
        assert report[store]["response"] == "5"
        assert report[store]["tool_results"] == [{"sum": 5, "for": "alice"}]
        assert report[store]["schema"]["required"] == ["a", "b"]  # derived by msgspec; the principal is not in it
        assert report[store]["stored_roles"] == ["user", "assistant", "tool", "assistant", "user"]


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            ["serve"],
            {"BETTER_AUTH_SECRET": "s" * 32},
            "chatcore serve needs the server extra: pip install 'chatcore[server]'",
        ),
        (["serve", "--dev"], {}, "chatcore serve needs the server extra: pip install 'chatcore[server]'"),
        (
            ["mcp-serve"],
            {"BETTER_AUTH_SECRET": "s" * 32},
            "chatcore mcp-serve needs the mcp extra: pip install 'chatcore[mcp]'",
        ),
    ],
)
def test_bare_install_commands_name_the_missing_extra(
    bare_venv: Path, tmp_path: Path, command: list[str], env: dict[str, str], message: str
) -> None:
    done = _run(bare_venv / "bin" / "chatcore", *command, cwd=tmp_path, env=_bare_env(bare_venv, **env))
    assert done.returncode == 2
    assert done.stderr.strip() == f"chatcore: {message}"
    assert "Traceback" not in done.stderr


def test_bare_install_migrates_and_mints_tokens(bare_venv: Path, tmp_path: Path) -> None:
    env = _bare_env(bare_venv, DATABASE_URL=f"sqlite:///{tmp_path / 'chatcore.db'}", BETTER_AUTH_SECRET="s" * 32)
    migrated = _run(bare_venv / "bin" / "chatcore", "migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "database is up to date" in migrated.stdout
    minted = _run(bare_venv / "bin" / "chatcore", "token", "--user-id", "alice", cwd=tmp_path, env=env)
    assert minted.returncode == 0, minted.stderr
    assert minted.stdout.count(".") == 2  # a JWT: header.payload.signature


def test_importing_the_library_loads_no_server_or_sdk_module_even_where_they_are_installed() -> None:
    """In this (dev) environment every extra is installed: the library's imports must still not pull them in."""
    probe = textwrap.dedent(
        """
        import json, sys
        import chatcore, chatcore.fakes, chatcore.model, chatcore.ports, chatcore.tools
        import chatcore.adapters.sqlalchemy.conversation_store, chatcore.adapters.sqlalchemy.migrate
        import chatcore.adapters.auth.hs256, chatcore.adapters.auth.jwks, chatcore.adapters.offline.agent
        import chatcore.entrypoints.cli, chatcore.entrypoints.settings
        print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
        """
    )
    done = _run(sys.executable, "-c", probe, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)
