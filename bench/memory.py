"""Resident memory of processes: /proc status fields, a peak sampler, and a server's workers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the venv

from bench.cpu import tree

MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile, RssShmem of `pid` in KiB (empty when gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            found[key] = int(rest.split()[0])
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


@dataclass
class Peak:
    """The largest RSS and anonymous (private) memory seen, in bytes, and which processes made it."""

    rss: int = 0
    anon: int = 0
    hwm: int = 0
    processes: int = 0
    samples: int = 0
    cpu: dict[int, float] = field(default_factory=dict)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of every process seen, as last sampled (processes that exit keep their last)."""
        return sum(self.cpu.values())

    def see(self, statuses: list[dict[str, int]]) -> None:
        """Account one sample over a group of processes (summed)."""
        self.samples += 1
        rss = sum(s.get("VmRSS", 0) for s in statuses) * 1024
        anon = sum(s.get("RssAnon", 0) for s in statuses) * 1024
        self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)
        self.hwm = max([self.hwm, *(s.get("VmHWM", 0) * 1024 for s in statuses)])
        self.processes = max(self.processes, len(statuses))


@dataclass
class Sampler:
    """Samples named groups of processes every `interval` seconds in a thread, keeping peaks."""

    groups: dict[str, Callable[[], list[int]]]
    interval: float = 0.05
    peaks: dict[str, Peak] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin sampling."""
        self.peaks = {name: Peak() for name in self.groups}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one sample of every group."""
        for name, find in self.groups.items():
            pids = find()
            statuses = [s for s in (status_kib(pid) for pid in pids) if s]
            if statuses:
                self.peaks[name].see(statuses)
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    self.peaks[name].cpu[pid] = seconds

    def stop(self) -> dict[str, Peak]:
        """Stop sampling; the peaks per group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peaks


def backends(postmaster_pid: int | None, database: str) -> Callable[[], list[int]]:
    """PostgreSQL processes working for `database`: its backends and their parallel workers."""

    def find() -> list[int]:
        if postmaster_pid is None:
            return []
        titles: dict[int, str] = {}
        for child in tree(postmaster_pid)[1:]:
            try:
                titles[int(child.pid)] = " ".join(child.cmdline())
            except psutil.Error:
                continue
        mine = [pid for pid, title in titles.items() if f" {database} " in title]
        helpers = [
            pid
            for pid, title in titles.items()
            if "parallel worker" in title and any(title.endswith(f"for PID {b}") for b in mine)
        ]
        return mine + helpers

    return find


@dataclass(frozen=True)
class ProcessMemory:
    """One process of a server: its role and memory in bytes (USS: memory only it holds)."""

    pid: int
    role: str
    rss: int
    uss: int
    anon: int


def _role(process: psutil.Process, root_pid: int) -> str:
    if process.pid == root_pid:
        return "supervisor"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    if "resource_tracker" in command:
        return "resource tracker"
    if "spawn_main" in command or "multiprocessing" in command:
        return "worker"
    return "child"


def server_memory(root_pid: int) -> list[ProcessMemory]:
    """RSS, USS and anonymous memory of every process of a server's tree."""
    found: list[ProcessMemory] = []
    for process in tree(root_pid):
        try:
            uss = int(process.memory_full_info().uss)
        except psutil.Error:
            uss = 0
        status = status_kib(process.pid)
        if not status:
            continue
        found.append(
            ProcessMemory(
                process.pid,
                _role(process, root_pid),
                status.get("VmRSS", 0) * 1024,
                uss,
                status.get("RssAnon", 0) * 1024,
            )
        )
    return found
