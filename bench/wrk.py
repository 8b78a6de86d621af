"""wrk: find it (or install it with apt-get when root), run bench/ingest.lua, parse the result line."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

SCRIPT = Path(__file__).resolve().parent / "ingest.lua"
QUERY = "SdkAppid=1400000000&CallbackCommand=Profile.CallbackPortraitSet&contenttype=json&ClientIP=127.0.0.1&OptPlatform=iOS"
MARKER = "BENCH_RESULT "
INSTALL_HINT = "install it: `sudo apt-get install -y wrk` (Debian/Ubuntu), `brew install wrk` (macOS)"


class WrkMissing(Exception):
    """wrk is not installed and could not be installed here."""


@dataclass(frozen=True)
class Load:
    """The load every target gets."""

    connections: int
    threads: int
    duration: int
    warmup: int
    timeout: int
    users: int
    pause_ms: float = 0.0


class Errors(msgspec.Struct, frozen=True):
    """wrk's socket errors and its count of statuses > 399."""

    connect: int
    read: int
    write: int
    status: int
    timeout: int


class Latency(msgspec.Struct, frozen=True):
    """Latency statistics in microseconds."""

    min: float
    mean: float
    max: float
    stdev: float
    p50: float
    p90: float
    p99: float
    p999: float


class WrkResult(msgspec.Struct, frozen=True):
    """What ingest.lua's done() reports for one wrk run."""

    duration_us: int
    requests: int
    bytes: int
    sent: int
    errors: Errors
    latency_us: Latency
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def ok(self) -> int:
        """Responses with status 200."""
        return self.statuses.get(200, 0)

    @property
    def non_2xx(self) -> int:
        """Responses outside 200-299."""
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def socket_errors(self) -> int:
        """Connect, read, write errors and timeouts."""
        e = self.errors
        return e.connect + e.read + e.write + e.timeout

    @property
    def unanswered(self) -> int:
        """Requests sent that had no response when wrk stopped (at most one per connection)."""
        return max(self.sent - self.requests, 0)


def ensure_wrk() -> str:
    """The wrk executable; installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    can_install = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None
    if not can_install:
        raise WrkMissing(f"wrk is not installed; {INSTALL_HINT}")
    print("bench: wrk is not installed; installing it with `apt-get install -y wrk`", file=sys.stderr)
    if not _apt("install", "-y", "-q", "wrk"):
        _apt("update", "-q")
        if not _apt("install", "-y", "-q", "wrk"):
            raise WrkMissing(f"`apt-get install -y wrk` failed; {INSTALL_HINT}")
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing(f"wrk still not on PATH after apt-get; {INSTALL_HINT}")
    return found


def _apt(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", *args]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return done.returncode == 0


def wrk_version(wrk: str) -> str:
    """wrk's first banner line (`wrk -v`)."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def wrk_command(wrk: str, url: str, load: Load, duration: int, nonce: str, base_time: int) -> list[str]:
    """The wrk command line for one run against `url` (base, no query string)."""
    return [
        wrk,
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={duration}s",
        f"--timeout={load.timeout}s",
        f"--script={SCRIPT}",
        f"{url}/callback?{QUERY}",
        "--",
        nonce,
        str(base_time),
        str(load.users),
        *([f"{load.pause_ms:g}"] if load.pause_ms > 0 else []),
    ]


def parse_output(stdout: str) -> WrkResult:
    """The BENCH_RESULT line of wrk's output, decoded."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return msgspec.json.decode(line[len(MARKER) :], type=WrkResult)
    raise RuntimeError(f"wrk printed no result line:\n{stdout[-2000:]}")


def run_wrk(command: list[str]) -> WrkResult:
    """Run wrk to completion and parse its result."""
    return finish_wrk(start_wrk(command))


def start_wrk(command: list[str]) -> subprocess.Popen[str]:
    """Start wrk in the background (several can run at once)."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_wrk(process: subprocess.Popen[str]) -> None:
    """Kill a started wrk that is still running (a measurement failed part-way)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def finish_wrk(process: subprocess.Popen[str]) -> WrkResult:
    """Wait for a started wrk and parse its result."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}: {stderr.strip() or stdout[-2000:]}")
    return parse_output(stdout)
