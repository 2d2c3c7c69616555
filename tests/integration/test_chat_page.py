"""The chat page end to end: ``chatcore serve --dev`` as a user starts it, driven in headless Chromium.

Playwright for Python drives Debian's ``/usr/bin/chromium`` (``executable_path``): nothing downloads a
browser. ``make test`` installs it when missing and it can (``scripts/ensure-chromium``); without it these tests
skip with the command to run, except under ``CI=true``, where a missing browser fails the run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.conftest import in_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

if not CHROMIUM.exists():
    message = f"{CHROMIUM} not found: install Debian's chromium package with `sudo apt-get install -y chromium`"
    if in_ci():
        pytest.fail(message + " (CI=true: the browser tests may not be skipped)", pytrace=False)
    pytest.skip(message, allow_module_level=True)

from playwright.async_api import BrowserContext, Page, async_playwright, expect  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chatcore serve --dev`` on a SQLite file with the offline agent, as ``make run`` starts it."""
    directory = tmp_path_factory.mktemp("chat-page")
    port = _free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "ANTHROPIC_", "BETTER_AUTH_", "CHATCORE_", "DATABASE_URL"))
    }
    environment.update(DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'chat.db'}", CHATCORE_LLM="offline")
    log = (directory / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "chatcore.entrypoints.cli", "serve", "--dev", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"chatcore serve exited: {(directory / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chatcore serve did not start: {(directory / 'server.log').read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Chromium with a fresh profile, so no earlier test's token or cache leaks in."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


RECORD_REPLY = """
() => {
  window.replySnapshots = [];
  new MutationObserver(() => {
    const texts = document.querySelectorAll('.message.assistant .text');
    if (texts.length) window.replySnapshots.push(texts[texts.length - 1].textContent);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}
"""


async def open_page(browser: BrowserContext, server: str) -> Page:
    page = await browser.new_page()
    await page.goto(server)
    await expect(page.locator("#who")).to_have_text("user: demo-user")
    return page


async def test_a_message_streams_its_reply_fills_the_task_panel_and_survives_a_reload(
    browser: BrowserContext, server: str
) -> None:
    page = await open_page(browser, server)
    await page.evaluate(RECORD_REPLY)

    await page.fill("#input", "Add a task to buy milk")
    await page.click("#send")

    reply = page.locator(".message.assistant .text").last
    await expect(reply).to_have_text("I've added 'Buy milk' to your tasks (task 1).")
    await expect(page.locator(".message.assistant .tool.ok")).to_contain_text("add_task")
    await expect(page.locator("#tasks li")).to_have_text(["1. Buy milk"])
    await expect(page.locator("#send")).to_be_enabled()
    snapshots: list[str] = await page.evaluate("window.replySnapshots")
    partial = [s for s in dict.fromkeys(snapshots) if s and s != await reply.text_content()]
    assert len(partial) >= 3, snapshots  # the reply grew word by word before it was whole
    assert all("I've added 'Buy milk' to your tasks (task 1).".startswith(s) for s in partial)

    await page.reload()
    await expect(page.locator("#who")).to_have_text("user: demo-user")
    conversation = page.locator("#conversations li .title")
    await expect(conversation).to_have_text(["Add a task to buy milk"])
    await conversation.click()
    await expect(page.locator(".message.user .text")).to_have_text(["Add a task to buy milk"])
    await expect(page.locator(".message.assistant .text").last).to_have_text(
        "I've added 'Buy milk' to your tasks (task 1)."
    )
    await expect(page.locator("#tasks li")).to_have_text(["1. Buy milk"])


async def test_a_conversation_continues_and_can_be_deleted(browser: BrowserContext, server: str) -> None:
    page = await open_page(browser, server)
    await page.click("#new-chat")
    await page.fill("#input", "Add a task to call mom")
    await page.click("#send")
    await expect(page.locator(".message.assistant .text").last).to_contain_text("Call mom")
    await page.fill("#input", "Show me all my tasks")
    await page.click("#send")
    await expect(page.locator(".message.assistant .text").last).to_contain_text("Call mom")

    titles = page.locator("#conversations li .title")
    await expect(titles.first).to_have_text("Add a task to call mom")
    count = await titles.count()
    await page.locator("#conversations li .remove").first.click()

    await expect(titles).to_have_count(count - 1)
    await expect(page.locator(".message")).to_have_count(0)


async def test_a_delete_waits_for_approve_or_deny_on_the_page(browser: BrowserContext, server: str) -> None:
    """``serve --dev`` sets CHATCORE_APPROVAL_TOOLS=delete_task: the page shows Approve / Deny on the pending call."""
    page = await open_page(browser, server)
    await page.click("#new-chat")
    for text in ("Add a task called Team meeting", "Add a task called Quarterly report"):
        await page.fill("#input", text)
        await page.click("#send")
        await expect(page.locator("#send")).to_be_enabled()
    tasks = page.locator("#tasks li")
    await expect(tasks.filter(has_text="Team meeting")).to_have_count(1)

    await page.fill("#input", "Delete the meeting task")
    await page.click("#send")
    pending = page.locator(".tool.pending")
    await expect(pending).to_contain_text("delete_task")
    await expect(page.locator("#status")).to_have_text("Waiting for your approval.")
    await expect(tasks.filter(has_text="Team meeting")).to_have_count(1)  # nothing deleted yet
    await pending.locator("button.approve").click()
    await expect(page.locator(".message.assistant .text").last).to_contain_text("I've deleted 'Team meeting'")
    await expect(tasks.filter(has_text="Team meeting")).to_have_count(0)
    await expect(page.locator(".approval .decided").last).to_have_text("approved")

    await page.fill("#input", "Delete the report task")
    await page.click("#send")
    await page.locator(".tool.pending button.deny").click()
    await expect(page.locator(".message.assistant .text").last).to_contain_text("kept 'Quarterly report'")
    await expect(tasks.filter(has_text="Quarterly report")).to_have_count(1)
    await expect(page.locator(".tool.failed").last).to_contain_text("denied by the user")

    await page.fill("#input", "Delete the report task")  # asked again, decided after a reload
    await page.click("#send")
    await expect(page.locator(".tool.pending button.approve")).to_have_count(1)
    await page.reload()
    await expect(page.locator("#who")).to_have_text("user: demo-user")
    await page.locator("#conversations li .title", has_text="Add a task called Team meeting").click()
    await expect(page.locator(".approval .decided")).to_have_text(["approved", "denied"])
    await page.locator(".tool.pending button.approve").click()
    await expect(page.locator(".message.assistant .text").last).to_contain_text("I've deleted 'Quarterly report'")
    await expect(tasks.filter(has_text="Quarterly report")).to_have_count(0)
    await expect(page.locator("button.approve")).to_have_count(0)


async def test_the_page_works_under_a_host_apps_prefix(browser: BrowserContext, tmp_path: Path) -> None:
    """Mounted by a host app at /chat, the page calls the API below its own path, not the host's /api."""
    from .test_examples import running

    with (
        running("litestar_host", tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'notes.db'}") as base,
    ):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            token = (await client.post("/login", json={"user": "alice", "password": "wonderland"})).json()["token"]
        page = await browser.new_page()
        await page.goto(f"{base}/chat/")
        await page.fill("#token", token)
        await page.click("#use-token")
        await expect(page.locator("#who")).to_have_text("user: alice")

        await page.fill("#input", "note: buy milk")
        await page.click("#send")

        await expect(page.locator(".message.assistant .tool.ok")).to_contain_text("add_note")
        await expect(page.locator(".message.assistant .text").last).to_contain_text("buy milk")
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            notes = await client.get("/notes", headers={"Authorization": f"Bearer {token}"})
        assert notes.json() == ["buy milk"]
