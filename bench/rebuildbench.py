"""Time `profile-audit rebuild` on a loaded log; peak memory of the CLI and of its PostgreSQL backend."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.cpu import CpuMeter, tree
from bench.memory import Peak, Sampler, backends
from bench.servers import REPO, SCRUBBED, profile_audit_command

REPORTED = re.compile(r"(?P<events>\d+) events replayed in (?P<seconds>[\d.]+) s")
PROGRESS = re.compile(r"^rebuild: (?P<phase>\w+) (?P<done>\d+)/(?P<total>\d+)$")


@dataclass(frozen=True)
class RebuildRun:
    """One `profile-audit rebuild` run."""

    events: int
    wall_seconds: float
    reported_seconds: float | None
    events_replayed: int | None
    exit_status: int
    cli: Peak
    backend: Peak
    cpu_cores: dict[str, float] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)
    output: str = ""

    @property
    def events_per_second(self) -> float:
        """Events over the CLI process's wall time (start-up included)."""
        return self.events / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def reported_events_per_second(self) -> float | None:
        """Events over the rebuild's own timer (as the CLI prints it: no interpreter start-up)."""
        return self.events / self.reported_seconds if self.reported_seconds else None


def _collect(stream: IO[str], started: float, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.monotonic() - started, line.rstrip("\n")))


def _phases(lines: list[tuple[float, str]], wall: float) -> list[tuple[str, float]]:
    """Seconds spent per phase: each phase ends at its last progress line."""
    ends: dict[str, float] = {}
    for at, line in lines:
        match = PROGRESS.match(line)
        if match:
            phase = match["phase"]
            key = f"build {match['done']}/{match['total']}" if phase == "build" else phase
            ends[key] = at
    phases: list[tuple[str, float]] = []
    previous = 0.0
    for name, end in sorted(ends.items(), key=lambda item: item[1]):
        phases.append((name, end - previous))
        previous = end
    phases.append(("finish and exit", wall - previous))
    return phases


def run_rebuild(
    database_url: str,
    database: str,
    sdkappid: int,
    events: int,
    postmaster_pid: int | None,
    workdir: Path,
) -> RebuildRun:
    """Run the CLI to completion, sampling VmHWM/VmRSS of it and of its PostgreSQL backend."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update({"DATABASE_URL": database_url, "PROFILE_AUDIT_SDKAPPID": str(sdkappid)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    process = subprocess.Popen(
        [*profile_audit_command(), "rebuild"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    reader = threading.Thread(target=_collect, args=(process.stdout, started, lines), daemon=True)
    reader.start()
    sampler = Sampler({"cli": lambda: [process.pid], "backend": backends(postmaster_pid, database)})
    sampler.start()
    # The CLI is reaped before the meter stops: its CPU shows up as the reaped children's.
    meter = CpuMeter({"postgres": lambda: tree(postmaster_pid) if postmaster_pid else []})
    meter.start()
    # Not wait4's ru_maxrss: on Linux it counts the parent's pages between fork and exec.
    _, status = os.waitpid(process.pid, 0)
    wall = time.monotonic() - started
    peaks = sampler.stop()
    cpu = meter.stop(wall, children_label="cli")
    # The backend exits with the CLI's connection, before the meter's last look: use the sampler's.
    backend_cores = round(peaks["backend"].cpu_seconds / wall, 2) if wall else 0.0
    cpu["postgres"] = round(cpu["postgres"] + backend_cores, 2)
    cpu["other"] = round(max(cpu["other"] - backend_cores, 0.0), 2)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    output = "\n".join(line for _, line in lines)
    reported = REPORTED.search(output)
    return RebuildRun(
        events=events,
        wall_seconds=wall,
        reported_seconds=float(reported["seconds"]) if reported else None,
        events_replayed=int(reported["events"]) if reported else None,
        exit_status=process.returncode,
        cli=peaks["cli"],
        backend=peaks["backend"],
        cpu_cores=cpu,
        phases=_phases(lines, wall),
        output=output[-4000:],
    )
