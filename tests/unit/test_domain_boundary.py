"""The domain's boundary: ``src/chatcore`` imports only the standard library and itself, and knows only chat.

Read from the source with ``ast`` (nothing is imported), so an import hidden under ``if TYPE_CHECKING``
or inside a function counts as well.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "chatcore"
ALLOWED_THIRD_PARTY = {"chatcore.tools": {"msgspec"}}
"""Per domain module, the third-party packages it may import: function tools derive their JSON schemas with msgspec."""
OUTSIDE_THE_DOMAIN = ("chatcore.adapters", "chatcore.entrypoints")
TODO_WORDS = re.compile(r"\b(add_task|list_tasks|complete_task|delete_task|update_task|todo)\b")
"""The todo tools' names and the app's name (a docstring section called "Todo", as Google style has, is no app)."""
TASK_IDENTIFIER = re.compile(r"^_*Task|(?:^|_)tasks?_")
"""``Task``, ``TaskStore``, ``task_id``, ``tasks_done`` …; ``asyncio.Task`` and ``create_task`` are asyncio's words."""


def domain_modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(DOMAIN.rglob("*.py")):
        parts = path.relative_to(DOMAIN).with_suffix("").parts
        name = ".".join(("chatcore", *parts)).removesuffix(".__init__")
        modules.append((name, path))
    return modules


def imported_modules(tree: ast.Module) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the chatcore package
                found.extend(
                    [f"chatcore.{node.module}"] if node.module else [f"chatcore.{alias.name}" for alias in node.names]
                )
            elif node.module is not None:
                found.append(node.module)
    return found


def identifiers(tree: ast.Module) -> list[str]:
    """Every name the module binds or uses, except attributes of ``asyncio`` (its Task is not ours)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                names.append(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.alias):
            names.append(node.asname or node.name)
        elif isinstance(node, ast.keyword) and node.arg is not None:
            names.append(node.arg)
    return names


def test_the_domain_has_modules_to_check() -> None:
    names = [name for name, _ in domain_modules()]
    assert {"chatcore", "chatcore.service", "chatcore.ports", "chatcore.model"} <= set(names)


@pytest.mark.parametrize(("module", "path"), domain_modules(), ids=lambda value: str(value))
def test_a_domain_module_imports_only_the_standard_library_and_the_domain(module: str, path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed = ALLOWED_THIRD_PARTY.get(module, set())
    outside = []
    for imported in imported_modules(tree):
        root = imported.split(".")[0]
        if root == "chatcore":
            if imported.startswith(OUTSIDE_THE_DOMAIN):
                outside.append(imported)
        elif root not in sys.stdlib_module_names and root != "__future__" and root not in allowed:
            outside.append(imported)
    assert outside == [], f"{module} imports from outside the domain"


@pytest.mark.parametrize(("module", "path"), domain_modules(), ids=lambda value: str(value))
def test_a_domain_module_knows_nothing_of_tasks(module: str, path: Path) -> None:
    source = path.read_text()
    assert TODO_WORDS.findall(source) == [], f"{module} mentions the todo app"
    tree = ast.parse(source, filename=str(path))
    assert [name for name in identifiers(tree) if TASK_IDENTIFIER.search(name)] == [], f"{module} names tasks"


def test_the_rules_catch_what_they_are_for() -> None:
    """The checks above are not vacuous: an import of SQLAlchemy, a Task and a tool name are each caught."""
    tree = ast.parse(
        "import sqlalchemy\nfrom chatcore.adapters.todo import Task\nfrom . import model\n"
        "def f(task_id: int) -> None: ...\nasyncio.Task\n"
    )
    assert imported_modules(tree) == ["sqlalchemy", "chatcore.adapters.todo", "chatcore.model"]
    assert [name for name in identifiers(tree) if TASK_IDENTIFIER.search(name)] == ["Task", "task_id"]
    assert TODO_WORDS.findall("tools: add_task, list_tasks") == ["add_task", "list_tasks"]
