"""The three targets as subprocesses: how to start each, wait until it answers, and stop it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
# Variables that would change how the apps behave; the bench sets what it needs explicitly.
SCRUBBED = (
    "DATABASE_URL",
    "PROFILE_AUDIT_CALLBACK_TOKEN",
    "PROFILE_AUDIT_SDKAPPID",
    "PROFILE_AUDIT_API_TOKENS",
)


@dataclass
class Target:
    """A server to measure: its command line, extra environment and readiness path."""

    name: str
    title: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/healthz"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_app(app: str, port: int, workers: int) -> list[str]:
    # The way `profile-audit serve` runs its app (app.workers.serve_app: the same uvicorn settings,
    # the same acceptor handing connections to the workers), so that the ceiling is the same stack.
    return [
        sys.executable,
        "-c",
        "import sys; from app.workers import serve_app;"
        " serve_app(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), workers=int(sys.argv[3]),"
        " log_level='warning')",
        app,
        str(port),
        str(workers),
    ]


def profile_audit_command() -> list[str]:
    """How to run the `profile-audit` console script of this environment."""
    script = Path(sys.executable).parent / "profile-audit"
    if script.exists():
        return [str(script)]
    found = shutil.which("profile-audit")
    return [found] if found else [sys.executable, "-c", "from app.cli import main; main()"]


def real_target(port: int, workers: int, database_url: str, sdkappid: int, read_workers: int = 0) -> Target:
    """`profile-audit serve` on a migrated database."""
    return Target(
        name="real",
        title="profile-audit serve (group commit)",
        argv=[
            *profile_audit_command(),
            "serve",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--workers={workers}",
            f"--read-workers={read_workers}",
        ],
        env={
            "DATABASE_URL": database_url,
            "PROFILE_AUDIT_SDKAPPID": str(sdkappid),
            "PROFILE_AUDIT_API_TOKENS": "bench",
        },
        ready_path="/readyz",
    )


def echo_target(port: int, workers: int) -> Target:
    """The echo ceiling: same stack and parsing, no database."""
    return Target(
        name="echo",
        title="echo ceiling: same stack and parsing, no database",
        argv=_serve_app("bench.echo_app:create_app", port, workers),
    )


def insert_target(port: int, workers: int, database_url: str, pool_size: int) -> Target:
    """The naive baseline: one autocommit INSERT per request."""
    return Target(
        name="insert",
        title=f"one autocommit INSERT per request, asyncpg pool {pool_size}/worker",
        argv=_serve_app("bench.insert_app:create_app", port, workers),
        env={"BENCH_INSERT_DSN": database_url, "BENCH_INSERT_POOL": str(pool_size)},
    )


class Running:
    """A started target; `stop()` ends it (SIGTERM to its process group, then SIGKILL)."""

    def __init__(self, target: Target, port: int, log_path: Path, workdir: Path) -> None:
        self.target = target
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(target.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log: IO[bytes] = log_path.open("wb")
        # A scratch working directory, so that no `.env` of the checkout leaks into the run.
        self.process = subprocess.Popen(
            target.argv,
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll the readiness path until it answers 200; raise with the log tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target.name} exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.target.ready_path, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.target.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop gracefully (uvicorn finishes in-flight requests); returns the exit status."""
        if self.process.poll() is None:
            # Only the parent: it stops the workers; a second SIGTERM would force-exit them.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of our own process group, if any
        self._log.close()
        return self.process.returncode
