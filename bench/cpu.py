"""CPU time used by process trees (server, PostgreSQL) and by finished children (wrk) over a run,
and the time those trees' threads spent runnable but waiting for a core (Linux schedstat)."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the venv

Roots = Callable[[], list[psutil.Process]]


def tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def local_postmaster(backend_pid: int, data_directory: str | None) -> int | None:
    """The postmaster of a backend, if that server runs on this machine (the backend's cwd is its data dir)."""
    try:
        backend = psutil.Process(backend_pid)
        parent = backend.parent()
        if parent is None or not parent.name().startswith("postgres"):
            return None
        if data_directory and backend.cwd() != data_directory:
            return None
        return int(parent.pid)
    except psutil.Error:
        return None


def _cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def _run_queue_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """Per thread (by tid), seconds spent runnable but not running: schedstat's second field."""
    seconds: dict[int, float] = {}
    for process in processes:
        for stat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
            try:
                fields = stat.read_text().split()
            except OSError:  # the thread or process ended meanwhile
                continue
            if len(fields) >= 2:
                seconds[int(stat.parent.name)] = int(fields[1]) / 1e9
    return seconds


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """Seconds added between two snapshots (a process or thread new since `before` counts whole)."""
    return sum(seconds - before.get(key, 0.0) for key, seconds in after.items())


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0))


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Snapshots CPU seconds of named process trees, and of reaped children, around a run."""

    def __init__(self, groups: dict[str, Roots]) -> None:
        self._groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._waits_before: dict[str, dict[int, float]] = {}
        self.waiting: dict[str, float] = {}
        """After `stop`: per group, threads runnable but waiting for a core, on average."""
        self._children_before = 0.0
        self._machine_before = 0.0

    def start(self) -> None:
        """Take the first snapshot."""
        self._before = {name: _cpu_seconds(roots()) for name, roots in self._groups.items()}
        self._waits_before = {name: _run_queue_seconds(roots()) for name, roots in self._groups.items()}
        self._children_before = _children_seconds()
        self._machine_before = _machine_busy_seconds()

    def stop(self, elapsed: float, *, children_label: str) -> dict[str, float]:
        """Cores used per group over `elapsed` seconds, and by every other process as `other`."""
        machine = _machine_busy_seconds() - self._machine_before
        used: dict[str, float] = {}
        for name, roots in self._groups.items():
            total = _spent(self._before.get(name, {}), _cpu_seconds(roots()))
            used[name] = round(total / elapsed, 2) if elapsed > 0 else 0.0
            waits = _run_queue_seconds(roots())
            if waits and elapsed > 0:  # none where the kernel keeps no schedstat
                self.waiting[name] = round(_spent(self._waits_before.get(name, {}), waits) / elapsed, 2)
        children = _children_seconds() - self._children_before
        used[children_label] = round(children / elapsed, 2) if elapsed > 0 else 0.0
        other = machine / elapsed - sum(used.values()) if elapsed > 0 else 0.0
        used["other"] = round(max(other, 0.0), 2)
        return used
