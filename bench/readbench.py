"""Read-API latency on a loaded log while an ingest load runs (or alone): one wrk per endpoint, all at once."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the venv

from bench.cpu import CpuMeter, tree
from bench.servers import Running
from bench.wrk import Load, WrkResult, finish_wrk, kill_wrk, start_wrk, wrk_command

SCRIPT = Path(__file__).resolve().parent / "reads.lua"
ENDPOINTS = {
    "profile": "GET /users/{id}/profile",
    "at": "GET /users/{id}/profile?at=…",
    "history": "GET /users/{id}/profile-history?limit=50",
}


@dataclass(frozen=True)
class ReadPlan:
    """The read load: per endpoint `connections` connections, each pausing `pause_ms` between requests."""

    users: int
    at_low: int
    at_high: int
    connections: int
    pause_ms: float
    duration: int
    warmup: int
    timeout: int = 10
    token: str = "bench"


@dataclass(frozen=True)
class ReadRun:
    """Latency per endpoint, and what the ingest load did meanwhile (None: the reads ran alone)."""

    scenario: str
    ingest_load: Load | None
    ingest: WrkResult | None
    reads: dict[str, WrkResult]
    cpu_cores: dict[str, float]
    # Read connections held by each worker process, largest first (`serve` hands each new
    # connection to the worker holding the fewest, app/workers.py).
    connections_per_worker: list[int] = field(default_factory=list)
    # Per process tree, its threads runnable but waiting for a core, on average (schedstat): the
    # scheduling delay that requests meet on a shared machine, beside the CPU they use.
    waiting_for_a_core: dict[str, float] = field(default_factory=dict)


def read_command(wrk: str, url: str, plan: ReadPlan, mode: str, duration: int) -> list[str]:
    """wrk against one endpoint (reads.lua picks the users and times)."""
    return [
        wrk,
        "--threads=1",
        f"--connections={plan.connections}",
        f"--duration={duration}s",
        f"--timeout={plan.timeout}s",
        f"--script={SCRIPT}",
        url,
        "--",
        mode,
        str(plan.users),
        str(plan.at_low),
        str(plan.at_high),
        plan.token,
        f"{plan.pause_ms:g}",
    ]


def _reads(
    wrk: str, url: str, plan: ReadPlan, duration: int, workers: psutil.Process | None = None
) -> tuple[dict[str, WrkResult], list[int]]:
    """Run the read loads; with the server's process, also how their connections are spread."""
    started = {mode: start_wrk(read_command(wrk, url, plan, mode, duration)) for mode in ENDPOINTS}
    split: list[int] = []
    if workers is not None:
        time.sleep(min(1.0, duration / 2))  # wrk connects at start; keep-alive keeps them
        split = connections_per_worker(workers, [p.pid for p in started.values()], int(url.rsplit(":", 1)[1]))
    return {mode: finish_wrk(process) for mode, process in started.items()}, split


def connections_per_worker(server: psutil.Process, clients: list[int], port: int) -> list[int]:
    """How many of the clients' TCP connections to `port` each worker process holds, largest first."""
    client_ports: set[int] = set()
    for pid in clients:
        with contextlib.suppress(psutil.Error):
            client_ports |= {
                c.laddr.port
                for c in psutil.Process(pid).net_connections("tcp")
                if c.raddr and c.raddr.port == port
            }
    counts = []
    for worker in server.children(recursive=True) or [server]:
        with contextlib.suppress(psutil.Error):
            held = [c for c in worker.net_connections("tcp") if c.raddr and c.raddr.port in client_ports]
            counts.append(len(held))
    return sorted((n for n in counts if n), reverse=True)


def measure_reads(
    running: Running,
    wrk: str,
    plan: ReadPlan,
    ingest: Load | None,
    postmaster_pid: int | None,
    scenario: str,
) -> ReadRun:
    """Start the ingest load (if any), warm the reads up, then measure all endpoints concurrently."""
    ingest_process: subprocess.Popen[str] | None = None
    if ingest is not None:
        ingest_seconds = plan.warmup + plan.duration + 3
        nonce = secrets.token_hex(3) + "r"
        command = wrk_command(wrk, running.url, ingest, ingest_seconds, nonce, int(time.time() * 1000))
        ingest_process = start_wrk(command)
    try:
        time.sleep(1.0)
        if plan.warmup > 0:
            _reads(wrk, running.url, plan, plan.warmup)
        groups = {
            "server": lambda: tree(running.process.pid),
            "postgres": lambda: tree(postmaster_pid) if postmaster_pid else [],
        }
        if ingest_process is not None:
            groups["ingest wrk"] = lambda: tree(ingest_process.pid)
        meter = CpuMeter(groups)
        meter.start()
        began = time.monotonic()
        reads, split = _reads(wrk, running.url, plan, plan.duration, psutil.Process(running.process.pid))
        cpu = meter.stop(time.monotonic() - began, children_label="read wrk")
        ingested = finish_wrk(ingest_process) if ingest_process is not None else None
    finally:
        if ingest_process is not None:
            kill_wrk(ingest_process)
    return ReadRun(scenario, ingest, ingested, reads, cpu, split, meter.waiting)
