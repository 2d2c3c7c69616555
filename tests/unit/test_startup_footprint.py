"""What a worker loads at start-up: only the SDKs its settings name, and a frozen start-up heap.

Each provider SDK, MCP and Redis costs tens of MB per worker (issue 7: at most 150 MB a worker), so
the composition root imports them inside its factories. Each case runs in a fresh interpreter,
because this test process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("anthropic", "openai", "mcp", "redis")
"""Not OpenTelemetry: Litestar itself imports it whenever it is installed (the ``otel`` extra)."""

STARTUP = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    from litestar.testing import AsyncTestClient
    from chatcore.entrypoints.container import build_container
    from chatcore.entrypoints.http.app import create_app
    from chatcore.entrypoints.settings import Settings

    settings = Settings(**json.loads(sys.argv[1]))

    async def main() -> None:
        async with AsyncTestClient(app=create_app(build_container(settings))) as client:
            assert (await client.get("/health")).status_code == 200
            frozen = gc.get_freeze_count()
        print(json.dumps({"modules": sorted(sys.modules), "frozen": frozen}))

    asyncio.run(main())
    """
)


def start_app(tmp_path: Path, **settings: object) -> tuple[set[str], int]:
    """Start (and stop) an app in a new interpreter: the top-level packages it imported, and its frozen objects."""
    values = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'chatcore.db'}", "auth_secret": "s" * 32, **settings}
    done = subprocess.run(
        [sys.executable, "-c", STARTUP, json.dumps(values)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {name.split(".")[0] for name in report["modules"]}, int(report["frozen"])


@pytest.mark.parametrize(
    ("settings", "needed"),
    [
        ({"llm": "offline"}, set()),
        ({"llm": "openai", "openai_api_key": "sk-test"}, {"openai"}),
        ({"llm": "anthropic", "anthropic_api_key": "sk-ant-test"}, {"anthropic"}),
    ],
)
def test_a_worker_imports_only_the_provider_sdk_it_is_configured_for(
    tmp_path: Path, settings: dict[str, object], needed: set[str]
) -> None:
    imported, _ = start_app(tmp_path, **settings)

    assert imported & set(HEAVY) == needed


def test_the_start_up_heap_is_frozen_out_of_the_collectors_way(tmp_path: Path) -> None:
    _, frozen = start_app(tmp_path, llm="offline")

    assert frozen > 10_000  # the modules, routes and clients built at start-up: far more than this
