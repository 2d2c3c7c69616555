"""Process figures from ``/proc`` (Linux): CPU time of a process tree, peak and current RSS.

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (fields 14 and 15, in clock ticks), summed
over the server process and its descendants, so ``--workers N`` is measured whole. Peak RSS is
``VmHWM`` from ``/proc/<pid>/status``; writing ``5`` to ``/proc/<pid>/clear_refs`` resets it, so
each scenario gets its own peak.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process; 0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After "pid (comm) ": state is fields[0], so utime (stat field 14) is fields[11] and stime fields[12].
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, found by parent pid."""
    children: dict[int, list[int]] = {}
    for candidate in _all_pids():
        fields = _stat_fields(candidate)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(candidate)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def tree_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def peak_rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Start a new VmHWM window for ``pid``; False where the kernel does not allow it (then sample VmRSS)."""
    try:
        (PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle since boot (``/proc/stat``, all CPUs together)."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds a set of processes spent between ``start`` and ``stop``; processes born in between count whole."""

    def __init__(self) -> None:
        self._before: dict[int, float] = {}

    def start(self, pids: Iterable[int]) -> None:
        self._before = tree_cpu_seconds(pids)

    def stop(self, pids: Iterable[int]) -> float:
        after = tree_cpu_seconds(pids)
        return sum(max(0.0, seconds - self._before.get(pid, 0.0)) for pid, seconds in after.items())
