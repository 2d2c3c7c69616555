"""The AI SDK's and AG-UI's own clients against ``chatcore serve`` on PostgreSQL, in Node and in Chromium.

Two replicas of ``chatcore serve`` (offline agent, its words paced so a reply takes seconds) share the session's
database. Each test runs one scenario of the Node harness in ``tests/frontends`` (``ai`` 7.x, ``@ai-sdk/react``
and ``@ag-ui/client`` 1.x from its lock file: ``DefaultChatTransport``, ``readUIMessageStream``, the ``Chat``
class behind ``useChat``, ``HttpAgent``), which asserts what a frontend sees, then checks the facts it reports
against chatcore's own API. The browser test bundles a ``useChat`` page with esbuild from the same node_modules
and drives it in Debian's Chromium through Playwright (no browser is downloaded).

Without Node (or npm to install the harness) these tests skip with a message, except under ``CI=true``, where
``.ci/run`` installs Debian's nodejs and npm and a missing one fails the run.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.conftest import in_ci

from .conftest import SECRET, auth, token_for

pytestmark = pytest.mark.integration

HARNESS = Path(__file__).resolve().parents[1] / "frontends"
CHATCORE = shutil.which("chatcore", path=str(Path(sys.executable).parent)) or "chatcore"
NODE = shutil.which("node")
NPM = shutil.which("npm")
WORD_DELAY = "0.05"
"""Seconds between the offline agent's words: a tool reply takes about half a second, the help text about four."""


def _missing(what: str) -> None:
    message = f"{what}: install Debian's nodejs and npm (apt-get install -y nodejs npm) to run the frontend tests"
    if in_ci():
        pytest.fail(message + " (CI=true: the frontend tests may not be skipped)", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def harness() -> Path:
    """The Node harness with its node_modules installed from package-lock.json (``make test`` does it first)."""
    if NODE is None:
        _missing("node not found")
    installed = HARNESS / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (HARNESS / "package-lock.json").stat().st_mtime:
        if NPM is None:
            _missing("npm not found and tests/frontends/node_modules is not installed")
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HARNESS, check=True, timeout=600)
    return HARNESS


@dataclass(frozen=True)
class Replicas:
    first: str
    second: str
    page_origin: str


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two ``chatcore serve`` processes on the session's database; CORS lets the test page's origin in."""
    directory = tmp_path_factory.mktemp("frontends")
    page_origin = f"http://127.0.0.1:{_free_port()}"
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "ANTHROPIC_", "BETTER_AUTH_", "CHATCORE_", "DATABASE_URL"))
    }
    environment.update(
        DATABASE_URL=postgres_url,
        BETTER_AUTH_SECRET=SECRET,
        CHATCORE_LLM="offline",
        CHATCORE_OFFLINE_WORD_DELAY=WORD_DELAY,
        CHATCORE_CORS_ORIGINS=page_origin,
        CHATCORE_APPROVAL_TOOLS="delete_task",
    )
    processes, bases = [], []
    try:
        for index in range(2):
            port = _free_port()
            log = (directory / f"replica-{index}.log").open("w")
            processes.append(
                (
                    subprocess.Popen(
                        [CHATCORE, "serve", "--port", str(port), *(["--no-migrate"] if index else [])],
                        env=environment,
                        cwd=directory,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        for (process, _), base in zip(processes, bases, strict=True):
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    logs = "\n".join(p.read_text() for p in directory.glob("replica-*.log"))
                    pytest.fail(f"chatcore serve did not start:\n{logs}")
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield Replicas(bases[0], bases[1], page_origin)
    finally:
        for process, log in processes:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            log.close()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def scenario(harness: Path, replicas: Replicas, name: str, user: str) -> dict[str, Any]:
    """Run one scenario of ``scenarios.mjs`` as ``user``; the facts it printed."""
    assert NODE is not None
    environment = {
        **os.environ,
        "CHATCORE_URL": replicas.first,
        "CHATCORE_REPLICA_URL": replicas.second,
        "CHATCORE_USER": user,
        "CHATCORE_TOKEN": token_for(user, f"{user}@example.com"),
    }
    result = subprocess.run(
        [NODE, "scenarios.mjs", name], cwd=harness, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr}\n{result.stdout}"
    facts: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return facts


def get(base: str, user: str, path: str) -> Any:
    response = httpx.get(f"{base}/api/{user}{path}", headers=auth(user), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_use_chat_transport_streams_the_reply_and_its_tool_part(harness: Path, replicas: Replicas) -> None:
    user = new_user()

    facts = scenario(harness, replicas, "ai-sdk-send", user)

    [conversation] = get(replicas.first, user, "/conversations")["items"]
    assert conversation["id"] == facts["conversationId"]
    assert conversation["title"] == "Add a task to buy milk"
    history = get(replicas.second, user, f"/conversations/{conversation['id']}/messages")["items"]
    assert history[-1]["id"] == facts["messageId"]
    assert history[-1]["content"] == facts["text"]
    assert [t["title"] for t in get(replicas.first, user, "/tasks")] == ["Buy milk"]


def test_reconnect_to_stream_replays_a_running_turn_on_another_replica(harness: Path, replicas: Replicas) -> None:
    user = new_user()

    facts = scenario(harness, replicas, "ai-sdk-resume", user)

    [conversation] = get(replicas.first, user, "/conversations")["items"]
    history = get(replicas.first, user, f"/conversations/{conversation['id']}/messages")["items"]
    assert [(m["role"], m["content"]) for m in history] == [("user", "hello"), ("assistant", facts["text"])]


def test_regenerate_message_answers_again_and_keeps_the_old_reply_superseded(harness: Path, replicas: Replicas) -> None:
    user = new_user()

    facts = scenario(harness, replicas, "ai-sdk-regenerate", user)

    history = get(replicas.first, user, f"/conversations/{facts['conversationId']}/messages")["items"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "complete"),
        ("assistant", "superseded"),
        ("assistant", "superseded"),
        ("assistant", "complete"),
        ("assistant", "complete"),
    ]
    assert history[2]["id"] == facts["firstId"]
    assert history[-1]["id"] == facts["secondId"]
    # The first reply's add_task ran; regenerating does not undo it, and the new reply ran its own.
    tasks = get(replicas.first, user, "/tasks")
    assert [(t["id"], t["title"]) for t in tasks] == [
        (facts["firstTaskId"], "Call mom"),
        (facts["secondTaskId"], "Call mom"),
    ]


def test_add_tool_approval_response_runs_the_stored_call_once(harness: Path, replicas: Replicas) -> None:
    user = new_user()

    facts = scenario(harness, replicas, "ai-sdk-approval", user)

    assert get(replicas.first, user, "/tasks") == []
    history = get(replicas.first, user, f"/conversations/{facts['conversationId']}/messages")["items"]
    [call] = [c for m in history for c in m["tool_calls"] if c["id"] == facts["toolCallId"]]
    assert "error" not in call
    assert call["approval"]


def test_ag_ui_http_agent_runs_and_ends_with_the_messages(harness: Path, replicas: Replicas) -> None:
    user = new_user()

    facts = scenario(harness, replicas, "ag-ui-run", user)

    [conversation] = get(replicas.first, user, "/conversations")["items"]
    assert conversation["id"] == facts["conversationId"]
    history = get(replicas.first, user, f"/conversations/{conversation['id']}/messages")["items"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["Add a task to buy bread", "Show me all my tasks"]


# --- useChat in a browser ------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 20_000
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>useChat</title></head>
<body><div id="root"></div><script src="chat.js"></script></body></html>"""
RECORD_REPLY = """
() => {
  window.replySnapshots = [];
  new MutationObserver(() => {
    const texts = document.querySelectorAll('.message.assistant .text');
    if (texts.length) window.replySnapshots.push(texts[texts.length - 1].textContent);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def page_server(harness: Path, replicas: Replicas, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page and its esbuild bundle (React, ai, @ai-sdk/react from node_modules), served from the CORS origin."""
    directory = tmp_path_factory.mktemp("page")
    (directory / "index.html").write_text(PAGE)
    subprocess.run(
        [
            str(harness / "node_modules" / ".bin" / "esbuild"),
            "page/chat.jsx",
            "--bundle",
            "--format=iife",
            "--jsx=automatic",
            '--define:process.env.NODE_ENV="production"',
            f"--outfile={directory / 'chat.js'}",
        ],
        cwd=harness,
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = int(replicas.page_origin.rsplit(":", 1)[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield replicas.page_origin
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: install Debian's chromium package"
        if in_ci():
            pytest.fail(message + " (CI=true: the browser tests may not be skipped)", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest_asyncio.fixture
async def browser(chromium: Path, tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


async def test_use_chat_in_a_browser_streams_renders_the_tool_and_resumes_after_a_reload(
    browser: Any, page_server: str, replicas: Replicas
) -> None:
    from playwright.async_api import expect

    user, chat_id = new_user(), uuid.uuid4().hex[:16]
    query = httpx.QueryParams(api=replicas.first, user=user, token=token_for(user), chat=chat_id)
    page = await browser.new_page()
    await page.goto(f"{page_server}/index.html?{query}")
    await expect(page.locator("#status")).to_have_text("ready")
    await page.evaluate(RECORD_REPLY)

    await page.fill("#input", "Add a task to buy milk")
    await page.click("#send")

    reply = page.locator(".message.assistant .text").last
    await expect(reply).to_have_text(re.compile(r"^I've added 'Buy milk' to your tasks \(task \d+\)\.$"))
    tool = page.locator(".message.assistant .tool").last
    await expect(tool).to_have_attribute("data-state", "output-available")
    await expect(tool.locator(".name")).to_have_text("add_task")
    assert json.loads(await tool.locator(".output").inner_text())["title"] == "Buy milk"
    snapshots: list[str] = await page.evaluate("window.replySnapshots")
    partial = [s for s in dict.fromkeys(snapshots) if s and s != await reply.text_content()]
    assert len(partial) >= 3, snapshots  # the text grew word by word before it was whole
    await expect(page.locator("#status")).to_have_text("ready")

    # A slow reply (the help text, about four seconds): reload while it streams; useChat resumes it.
    await page.fill("#input", "hello")
    await page.click("#send")
    await expect(page.locator(".message.assistant .text").last).to_contain_text("todo assistant")
    resumed: list[int] = []
    page.on("response", lambda response: resumed.append(response.status) if response.url.endswith("/stream") else None)
    await page.reload()
    await expect(page.locator(".message.user")).to_have_count(2)
    last = page.locator(".message.assistant .text").last
    await expect(last).to_contain_text("Update task 1 description to Before 6pm")
    await expect(page.locator(".message.assistant")).to_have_count(2)
    await expect(page.locator("#status")).to_have_text("ready")
    history = get(replicas.first, user, f"/ai-sdk/chat/{chat_id}/messages")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert (await page.locator(".message.assistant").last.get_attribute("data-id")) == history[-1]["id"]
    assert resumed == [200]  # the reply arrived through the resumed stream, not from the stored messages
