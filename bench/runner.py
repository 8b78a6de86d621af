"""Measure one target: start it, warm it up, run wrk under the CPU meter, stop it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import CpuMeter, tree
from bench.profiling import INSTALL_HINT, find_py_spy, start_recording, summarize
from bench.servers import Running, Target
from bench.wrk import Load, WrkResult, run_wrk, wrk_command


@dataclass(frozen=True)
class Measurement:
    """One target's measured run (and its warm-up)."""

    name: str
    title: str
    result: WrkResult
    warmup: WrkResult | None
    cpu_cores: dict[str, float]
    exit_status: int | None
    log: str
    profiled: WrkResult | None = None
    profile: tuple[str, ...] = ()

    @property
    def cpu_ms_per_request(self) -> float:
        """Server + PostgreSQL CPU milliseconds per completed request (robust to a busy machine)."""
        cores = self.cpu_cores.get("server", 0.0) + self.cpu_cores.get("postgres", 0.0)
        return 1000 * cores / self.result.rps if self.result.rps else 0.0

    @property
    def runs(self) -> list[WrkResult]:
        """Every wrk run against this target: warm-up, measured, profiled."""
        return [r for r in (self.warmup, self.result, self.profiled) if r is not None]

    @property
    def ok_total(self) -> int:
        """200 responses over every run."""
        return sum(r.ok for r in self.runs)

    @property
    def unanswered_total(self) -> int:
        """Requests left in flight when a wrk run stopped."""
        return sum(r.unanswered for r in self.runs)

    @property
    def other_total(self) -> int:
        """Non-200 responses over every run."""
        return sum(r.requests - r.ok for r in self.runs)


def _wrk(wrk: str, url: str, load: Load, duration: int, phase: str) -> WrkResult:
    nonce = secrets.token_hex(3) + phase
    return run_wrk(wrk_command(wrk, url, load, duration, nonce, int(time.time() * 1000)))


def measure(
    target: Target,
    *,
    wrk: str,
    load: Load,
    port: int,
    log_path: Path,
    workdir: Path,
    postmaster_pid: int | None,
    profile_to: Path | None = None,
    after_warmup: Callable[[], None] | None = None,
    before_stop: Callable[[Running], None] | None = None,
) -> Measurement:
    """Start `target` on `port`, warm up, measure under `load`, optionally profile, stop it gracefully.

    `before_stop` is called with the still-running target after the measured (and profiled) run.
    """
    running = Running(target, port, log_path, workdir)
    try:
        running.wait_ready()
        warmup = _wrk(wrk, running.url, load, load.warmup, "w") if load.warmup > 0 else None
        if after_warmup is not None:
            after_warmup()
        meter = CpuMeter(
            {
                "server": lambda: tree(running.process.pid),
                "postgres": lambda: tree(postmaster_pid) if postmaster_pid else [],
            }
        )
        meter.start()
        started = time.monotonic()
        result = _wrk(wrk, running.url, load, load.duration, "m")
        cpu = meter.stop(time.monotonic() - started, children_label="wrk")
        profiled, profile = _profile(running, wrk, load, profile_to) if profile_to else (None, ())
        if before_stop is not None:
            before_stop(running)
    finally:
        status = running.stop()
    return Measurement(
        target.name, target.title, result, warmup, cpu, status, str(log_path), profiled, profile
    )


def _profile(
    running: Running, wrk: str, load: Load, raw_path: Path
) -> tuple[WrkResult | None, tuple[str, ...]]:
    """One more wrk run of the same length while py-spy samples the workers (not the measured one)."""
    py_spy = find_py_spy()
    if py_spy is None:
        return None, (f"py-spy not found; {INSTALL_HINT}",)
    recorder = start_recording(py_spy, running.process.pid, load.duration, raw_path)
    result = _wrk(wrk, running.url, load, load.duration, "p")
    _, errors = recorder.communicate(timeout=load.duration + 60)
    if recorder.returncode != 0 or not raw_path.exists():
        return result, (f"py-spy failed: {errors.decode(errors='replace').strip()[-500:]}",)
    return result, (f"py-spy collapsed stacks: {raw_path}", *summarize(raw_path))
