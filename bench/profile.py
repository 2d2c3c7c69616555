"""Where chatcore's CPU goes in a scenario (overhead and streaming-sse by default): py-spy samples, as Markdown.

py-spy attaches to the running ``chatcore serve`` (``--nonblocking``, so the server is never
paused) while the scenario runs once more, right after its measured run and outside its figures. Only busy
threads are sampled, so sample counts are CPU time. The summary gives the share of samples by
package (where the leaf frame's code lives) and the functions with the most samples including
their callees.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.measure import Bench
    from bench.scenarios import Scenario
    from bench.servers import Server

SAMPLES_PER_SECOND = 250
ATTACH_TIMEOUT_SECONDS = 15.0
WRITE_TIMEOUT_SECONDS = 30.0
TOP = 15
TURN_ANCHOR = "ChatService._run_turn"
"""Where a JSON turn's own work starts below the HTTP plumbing."""


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's ``--format raw`` (collapsed stacks, root first): ``frame;frame;frame count`` per line."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def package_of(frame: str) -> str:
    """The top-level package of a frame such as ``Router.route (litestar/router.py:12)``; stdlib modules too."""
    if frame.startswith("process "):
        return "no Python frame (native code, GC)"
    _, _, location = frame.rpartition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    if path.startswith("<"):
        return "python internals"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def function_of(frame: str) -> str:
    name, _, location = frame.rpartition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})"


def start_up_chain(stacks: list[tuple[list[str], int]]) -> set[str]:
    """The functions every stack from the process's entry point shares (``main``, the server's ``run``, the
    event loop's): they top any inclusive list and say nothing. py-spy also records stacks that begin at a
    resumed coroutine; those are left out of the comparison."""
    chains = [[frame for frame in frames if not frame.startswith("process ")] for frames, _ in stacks]
    chains = [chain for chain in chains if chain]
    if not chains:
        return set()
    entry = Counter(chain[0] for chain in chains).most_common(1)[0][0]
    shared: set[str] = set()
    for depth in zip(*(chain for chain in chains if chain[0] == entry), strict=False):
        if len(set(depth)) > 1:
            break
        shared.add(function_of(depth[0]))
    return shared


def summarise(stacks: list[tuple[list[str], int]], top: int = TOP, anchor: str | None = TURN_ANCHOR) -> str:
    """Shares of CPU by package, by function below ``anchor`` (with callees), and by function (own time).

    Frames above ``anchor`` (event loop, server, middleware, route) are on the path of every turn and
    would top any inclusive list; the share of samples outside ``anchor`` is that plumbing's cost.
    Without an anchor (a streamed turn runs in tasks of its own, not below one call), every function
    counts but the process's start-up chain (``start_up_chain``), which is on every full stack.
    """
    total = sum(count for _, count in stacks)
    if not total:
        return "No samples were recorded."
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    in_turn = 0
    for frames, count in stacks:
        python_frames = [frame for frame in frames if not frame.startswith("process ")]
        by_package[package_of(frames[-1])] += count
        if python_frames:
            leaf[function_of(python_frames[-1])] += count
        if anchor is None:
            depth: int | None = -1
        else:
            depth = next((i for i, frame in enumerate(python_frames) if frame.startswith(anchor + " (")), None)
        if depth is not None:
            in_turn += count
            for function in {function_of(frame) for frame in python_frames[depth + 1 :]}:
                inclusive[function] += count
    if anchor is None:
        roots = start_up_chain(stacks)
        inclusive = Counter({function: count for function, count in inclusive.items() if function not in roots})

    def share(count: int) -> str:
        return f"{100 * count / total:.1f}%"

    if anchor is None:
        heading = [f"Samples: {total} at {SAMPLES_PER_SECOND}/s, busy threads only."]
        called = "| function (with its callees) | share of CPU |"
    else:
        heading = [
            f"Samples: {total} at {SAMPLES_PER_SECOND}/s, busy threads only. Inside `{anchor}`: {share(in_turn)}; "
            f"the rest is the event loop and its I/O callbacks, HTTP parsing, framework, middleware, auth and logging."
        ]
        called = f"| function called by `{anchor}` (with its callees) | share of CPU |"
    return "\n".join(
        [
            *heading,
            "",
            "| package of the running code | share of CPU |",
            "|---|--:|",
            *(f"| {package} | {share(count)} |" for package, count in by_package.most_common(top)),
            "",
            called,
            "|---|--:|",
            *(f"| `{function}` | {share(count)} |" for function, count in inclusive.most_common(top * 2)),
            "",
            "| function (own time only) | share of CPU |",
            "|---|--:|",
            *(f"| `{function}` | {share(count)} |" for function, count in leaf.most_common(top)),
        ]
    )


async def profile_scenario(bench: Bench, server: Server, scenario: Scenario, log_dir: Path) -> str:
    """``scenario`` once more under py-spy; Markdown for docs/performance.md (or why there is none)."""
    heading = f"## Profile: chatcore in the {scenario.name} scenario"
    executable = py_spy()
    if executable is None:
        return f"{heading}\n\npy-spy is not installed (`pip install py-spy`), so there is no profile."
    output = log_dir / f"chatcore-{scenario.name}.raw"
    output.unlink(missing_ok=True)
    recorder = await asyncio.create_subprocess_exec(
        executable,
        "record",
        "--pid",
        str(server.pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        str(SAMPLES_PER_SECOND),
        "--format",
        "raw",
        "--output",
        str(output),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert recorder.stdout is not None
    try:
        async with asyncio.timeout(ATTACH_TIMEOUT_SECONDS):
            while b"Sampling process" not in (line := await recorder.stdout.readline()):
                if not line:
                    return f"{heading}\n\npy-spy could not attach to chatcore (it needs ptrace permission)."
    except TimeoutError:
        recorder.kill()
        await recorder.wait()
        return f"{heading}\n\npy-spy did not start sampling in time."
    drain = asyncio.create_task(recorder.stdout.read())
    measurement = await bench.measure(server, scenario)
    recorder.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(recorder.wait(), WRITE_TIMEOUT_SECONDS)
    except TimeoutError:
        recorder.kill()
        await recorder.wait()
    with contextlib.suppress(Exception):
        await drain
    if not output.exists():
        return f"{heading}\n\npy-spy wrote no samples."
    anchor = TURN_ANCHOR if scenario.protocol == "json" else None
    summary = summarise(parse_raw(output.read_text().splitlines()), anchor=anchor)
    return (
        f"{heading}\n\n"
        f"py-spy on `chatcore serve` during an extra {scenario.name} run ({measurement.ok} turns, "
        f"{measurement.turns_per_second:.1f} turns/s while sampled; not part of the figures above). "
        f"Raw samples: `{output}`.\n\n{summary}"
    )
