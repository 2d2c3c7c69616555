"""What the composition root wires from settings (no resource is started: nothing connects)."""

from __future__ import annotations

from chatcore import Principal
from chatcore.adapters.todo import TODO_SYSTEM_PROMPT
from chatcore.entrypoints.container import build_container, chat_policy, streamed_turns_policy
from chatcore.entrypoints.settings import Settings
from chatcore.model import utcnow
from chatcore.service import DEFAULT_SYSTEM_PROMPT, ChatPolicy, render_system_prompt


def test_the_server_mounts_the_todo_toolset_so_its_prompt_is_the_todo_prompt() -> None:
    assert chat_policy(Settings()).system_prompt == TODO_SYSTEM_PROMPT


def test_chatcore_system_prompt_replaces_the_todo_prompt() -> None:
    settings = Settings.from_env({"CHATCORE_SYSTEM_PROMPT": "You are a pirate. The user is {name}."})
    assert chat_policy(settings).system_prompt == "You are a pirate. The user is {name}."


def test_the_domains_default_prompt_is_a_generic_assistant_with_every_placeholder_filled() -> None:
    assert ChatPolicy().system_prompt == DEFAULT_SYSTEM_PROMPT
    assert "task" not in DEFAULT_SYSTEM_PROMPT.lower()
    now = utcnow()
    rendered = render_system_prompt(DEFAULT_SYSTEM_PROMPT, Principal("u-1", "ada@example.com", "Ada"), now)
    assert "Ada" in rendered
    assert "ada@example.com" in rendered
    assert now.date().isoformat() in rendered
    assert "{" not in rendered


def test_chatcore_shutdown_grace_is_the_streamed_turns_shutdown_wait() -> None:
    settings = Settings.from_env({"CHATCORE_SHUTDOWN_GRACE": "4.5"})
    assert streamed_turns_policy(settings).shutdown_seconds == 4.5
    assert build_container(settings).stream_policy().shutdown_seconds == 4.5


async def test_chatcore_todo_tools_off_mounts_no_todo_tool_and_keeps_the_generic_prompt() -> None:
    settings = Settings.from_env({"CHATCORE_TODO_TOOLS": "false"})
    assert chat_policy(settings).system_prompt == DEFAULT_SYSTEM_PROMPT
    container = build_container(settings)
    tools = await container.tools()
    try:
        assert await tools.list_tools() == []
    finally:
        await container.shutdown_resources()


async def test_the_todo_tools_are_mounted_by_default() -> None:
    container = build_container(Settings())
    tools = await container.tools()
    try:
        assert {spec.name for spec in await tools.list_tools()} >= {"add_task", "list_tasks", "delete_task"}
    finally:
        await container.shutdown_resources()
