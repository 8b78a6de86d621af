"""Shared fixtures: a real PostgreSQL (given, or a throwaway embedded one) and migrated databases."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.config import Settings, asyncpg_dsn
from app.database import upgrade
from app.embedded import EmbeddedDatabase

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "callbacks.jsonl"
SDKAPPID = 1400000000
OTHER_SDKAPPID = 1400000001
API_TOKEN = "test-token"


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL to a real PostgreSQL: TEST_DATABASE_URL/DATABASE_URL, or one started here."""
    given = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's basetemp: another pytest run may prune that while this server runs.
    embedded = EmbeddedDatabase(Path(tempfile.mkdtemp(prefix="profile-audit-test-pg-")), delete_on_stop=True)
    try:
        embedded.start()
    except Exception as exc:  # never skip: a missing database is a failure
        pytest.fail(f"could not start the embedded PostgreSQL for the tests: {exc}")
    yield embedded.url("postgres")
    embedded.stop()
    shutil.rmtree(embedded.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    """A database migrated to head by Alembic, copied for each test."""
    name = f"pa_template_{os.getpid()}"
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    upgrade(with_database(server_url, name))
    yield name
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A fresh database at head, dropped after the test."""
    name = f"pa_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"pa_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}"))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app on `database_url`."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": Path("/nonexistent"),
        "sdkappids": (SDKAPPID, OTHER_SDKAPPID),
        "callback_token": None,
        "api_tokens": (API_TOKEN,),
        "max_body_bytes": 64 * 1024,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection to the test database."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app in process, on the test database, lifespan run."""
    app = create_app(make_settings(database_url))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def fixture_deliveries() -> list[dict[str, Any]]:
    """The shared sample deliveries."""
    return [json.loads(line) for line in FIXTURES.read_text().splitlines() if line.strip()]


# --- helpers for the unit, integration and end-to-end suites ---------------------------------

OK_REPLY = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
REPO_ROOT = Path(__file__).resolve().parents[1]


def is_fail_reply(payload: Any) -> bool:
    """True for Tencent's FAIL reply with a non-empty reason."""
    return (
        isinstance(payload, dict)
        and set(payload) == {"ActionStatus", "ErrorCode", "ErrorInfo"}
        and payload["ActionStatus"] == "FAIL"
        and payload["ErrorCode"] == 1
        and isinstance(payload["ErrorInfo"], str)
        and payload["ErrorInfo"] != ""
    )


def portrait_query(sdkappid: int = SDKAPPID, **extra: str) -> dict[str, str]:
    """The query string Tencent IM adds to a `Profile.CallbackPortraitSet` delivery."""
    query = {
        "SdkAppid": str(sdkappid),
        "CallbackCommand": "Profile.CallbackPortraitSet",
        "contenttype": "json",
        "ClientIP": "127.0.0.1",
        "OptPlatform": "RESTAPI",
    }
    query.update(extra)
    return query


def portrait_body(
    user: str = "u1", event_time: int = 1_700_000_000_000, **items: str | int
) -> dict[str, Any]:
    """A well-formed `Profile.CallbackPortraitSet` body."""
    profile_items = [{"Tag": tag, "Value": value} for tag, value in items.items()] or [
        {"Tag": "Tag_Profile_IM_Nick", "Value": f"nick of {user}"}
    ]
    return {
        "CallbackCommand": "Profile.CallbackPortraitSet",
        "Operator_Account": user,
        "From_Account": user,
        "EventTime": event_time,
        "ProfileItem": profile_items,
    }


async def count_rows(connection: asyncpg.Connection[Any], table: str) -> int:
    """Rows in `table` (a fixed name from the test, never user input)."""
    return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))


async def wait_for_a_lock_wait(connection: asyncpg.Connection[Any], pid: int | None = None) -> None:
    """Until another session (session `pid`, if given) waits for a lock; polled, a minute at most.

    pg_locks, not pg_stat_activity: the latter is read once per transaction, and `connection` may
    be inside one (holding the very lock waited for)."""
    deadline = time.monotonic() + 60
    while not await connection.fetchval(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
        " AND ($1::int IS NULL OR pid = $1))",
        pid,
    ):
        assert time.monotonic() < deadline, f"no session{'' if pid is None else f' {pid}'} waited for a lock"
        await asyncio.sleep(0.01)


# --- running `profile-audit` as a process ----------------------------------------------------


def profile_audit_command() -> list[str]:
    """The installed console script (pyproject: `profile-audit = "app.cli:main"`)."""
    script = Path(sys.executable).parent / "profile-audit"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from app.cli import main; main()"]


def cli_env(**values: str | None) -> dict[str, str]:
    """The process environment without any of the service's settings, then `values` (None unsets)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROFILE_AUDIT_") and k not in {"DATABASE_URL", "TEST_DATABASE_URL"}
    }
    env["PROFILE_AUDIT_LOG_LEVEL"] = "WARNING"
    for key, value in values.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `profile-audit ARGS` to completion (the timeout only stops a hung run)."""
    return subprocess.run(
        [*profile_audit_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running `profile-audit serve` process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"profile-audit serve did not exit after SIGTERM:\n{self.log()}")
        return int(self.process.returncode)


def wait_until_healthy(server: LiveServer, deadline_seconds: float = 90) -> None:
    """Poll GET /healthz until it answers 200; fail if the process exits first.

    The poll interval is `Popen.wait(timeout=…)`, which also returns at once when the process dies.
    """
    deadline = time.monotonic() + deadline_seconds
    with httpx.Client(base_url=server.url, timeout=5) as http:
        while True:
            try:
                if http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            try:
                server.process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            else:
                pytest.fail(f"profile-audit serve exited with {server.process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"profile-audit serve did not become healthy:\n{server.log()}")


def serve_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of `serve` on `database_url`: SDKAppID 1400000000, token API_TOKEN, `extra`."""
    return cli_env(
        DATABASE_URL=database_url,
        PROFILE_AUDIT_SDKAPPID=str(SDKAPPID),
        PROFILE_AUDIT_API_TOKENS=API_TOKEN,
        **extra,
    )


@contextmanager
def running_server(
    env: dict[str, str], workdir: Path, *, workers: int = 1, read_workers: int = 0, port: int | None = None
) -> Iterator[LiveServer]:
    """`profile-audit serve` on a free port, healthy; stopped with SIGTERM on the way out."""
    port = port or free_port()
    log_path = workdir / f"serve-{port}.log"
    options = ["--port", str(port), "--workers", str(workers), "--read-workers", str(read_workers)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*profile_audit_command(), "serve", *options],
            env=env,
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """`profile-audit serve --workers 2` on the test database (SDKAppID 1400000000, API_TOKEN)."""
    with running_server(serve_env(database_url), tmp_path, workers=2) as server:
        yield server


# A 500-byte nickname (Tencent's limit): 3-byte CJK, a 4-byte emoji, 2-byte accents and a
# combining mark, so that any re-encoding, escaping or truncation would change its bytes.
NICKNAME_500_BYTES = ("昵称🌸é" + "e\u0301") * 32 + "昵称🌸" + "é" * 5
assert len(NICKNAME_500_BYTES.encode()) == 500
