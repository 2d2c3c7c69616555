"""The TaskStore contract, run on every backend of ``tests/contract/conftest.py``: in memory, SQLite, PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from chatcore.adapters.todo.model import TaskNotFound
from chatcore.adapters.todo.ports import TaskStore


@pytest.fixture
def store(task_store: TaskStore) -> TaskStore:
    """This suite's store: the TaskStore of each backend in ``tests/contract/conftest.py``."""
    return task_store


@pytest.fixture
def alice() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.fixture
def bob() -> str:
    return f"user-{uuid.uuid4().hex}"


async def test_add_returns_the_new_pending_task(store: TaskStore, alice: str) -> None:
    task = await store.add(alice, "Buy 牛奶 🥛", "two litres, « bio »")

    assert (task.user_id, task.title, task.description, task.completed) == (
        alice,
        "Buy 牛奶 🥛",
        "two litres, « bio »",
        False,
    )
    assert isinstance(task.id, int)
    assert task.id > 0
    assert task.created_at.utcoffset() is not None
    assert task.updated_at == task.created_at
    assert await store.list(alice) == [task]


async def test_ids_increase_and_list_is_oldest_first(store: TaskStore, alice: str) -> None:
    added = [await store.add(alice, f"task {i}") for i in range(4)]

    assert [t.id for t in added] == sorted({t.id for t in added})
    assert await store.list(alice) == added


async def test_list_filters_by_status(store: TaskStore, alice: str) -> None:
    first, second, third = [await store.add(alice, title) for title in ("one", "two", "three")]
    done = await store.update(alice, second.id, completed=True)

    assert await store.list(alice, "all") == [first, done, third]
    assert await store.list(alice, "pending") == [first, third]
    assert await store.list(alice, "completed") == [done]


async def test_update_changes_only_the_given_fields(store: TaskStore, alice: str) -> None:
    task = await store.add(alice, "Call mum", "Sunday")

    retitled = await store.update(alice, task.id, title="Call mum and dad")
    assert (retitled.title, retitled.description, retitled.completed) == ("Call mum and dad", "Sunday", False)
    described = await store.update(alice, task.id, description="Sunday at 6")
    assert (described.title, described.description) == ("Call mum and dad", "Sunday at 6")
    completed = await store.update(alice, task.id, completed=True)
    assert completed.completed is True
    reopened = await store.update(alice, task.id, completed=False)
    assert reopened.completed is False
    untouched = await store.update(alice, task.id)
    assert (untouched.title, untouched.description, untouched.completed) == ("Call mum and dad", "Sunday at 6", False)

    assert untouched.id == task.id
    assert untouched.created_at == task.created_at
    assert untouched.updated_at >= completed.updated_at >= task.updated_at
    assert await store.list(alice) == [untouched]


async def test_delete_returns_the_task_as_it_was_and_removes_it(store: TaskStore, alice: str) -> None:
    keep = await store.add(alice, "keep")
    task = await store.update(alice, (await store.add(alice, "drop")).id, completed=True)

    assert await store.delete(alice, task.id) == task
    assert await store.list(alice) == [keep]
    with pytest.raises(TaskNotFound):
        await store.delete(alice, task.id)
    with pytest.raises(TaskNotFound):
        await store.update(alice, task.id, title="back from the dead")


async def test_another_users_task_is_not_found(store: TaskStore, alice: str, bob: str) -> None:
    task = await store.add(alice, "private")

    with pytest.raises(TaskNotFound):
        await store.update(bob, task.id, completed=True)
    with pytest.raises(TaskNotFound):
        await store.delete(bob, task.id)
    assert await store.list(bob) == []
    assert await store.list(alice) == [task]


@pytest.mark.parametrize("task_id", [0, -1, 10**12, 2**63, 2**70])
async def test_unknown_ids_are_not_found(store: TaskStore, alice: str, task_id: int) -> None:
    await store.add(alice, "exists")

    with pytest.raises(TaskNotFound, match="not found"):
        await store.update(alice, task_id, title="x")
    with pytest.raises(TaskNotFound, match="not found"):
        await store.delete(alice, task_id)
