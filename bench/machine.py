"""The facts of a run that are not measurements: the machine, its software, and the commit measured."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine_facts(pg_version: str) -> dict[str, str]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import uvicorn

    loop = "uvloop" if _importable("uvloop") else "asyncio"
    parser = "httptools" if _importable("httptools") else "h11"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "chatcore": source_revision(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu_model,
        "memory": memory,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "PostgreSQL": pg_version,
        "uvicorn": f"{uvicorn.__version__} ({loop} loop, {parser} parser, for both servers)",
    }


def source_revision() -> str:
    """The commit measured, and whether tracked files differed from it.

    Read-only git commands, with ``--no-optional-locks`` so they never take the index lock
    from someone committing in the same checkout.
    """
    git = shutil.which("git")
    if git is None:
        return "unknown"

    def run_git(*arguments: str) -> str:
        command = [git, "--no-optional-locks", "-C", str(REPO), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.strip()  # noqa: S603 - fixed arguments

    try:
        commit = run_git("rev-parse", "--short", "HEAD")
        dirty = run_git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
