"""`profile-audit serve` on the embedded default: starts, serves, stops its PostgreSQL, keeps the data."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import OK_REPLY, cli_env, portrait_body, portrait_query, run_cli, running_server

pytestmark = pytest.mark.e2e

DEV_AUTH = {"Authorization": "Bearer dev"}


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Live PostgreSQL processes whose command line names `pgdata`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = process.info["cmdline"] or []
            if process.info["name"] == "postgres" and any(str(pgdata) in part for part in cmdline):
                found.append(process)
        except psutil.Error:
            continue
    return found


def assert_postgres_stopped(pgdata: Path) -> None:
    """No PostgreSQL is left for `pgdata` (waits for processes already on their way out)."""
    _gone, alive = psutil.wait_procs(postgres_processes(pgdata), timeout=30)
    assert not alive, f"postgres still running for {pgdata}: {alive}"
    assert not (pgdata / "postmaster.pid").exists()


def test_embedded_default_lifecycle(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pgdata = data_dir / "pgdata"
    env = cli_env(PROFILE_AUDIT_DATA_DIR=str(data_dir))
    assert "DATABASE_URL" not in env
    first = portrait_body("persisted", 1000, Tag_Profile_IM_Nick="kept")

    with running_server(env, tmp_path) as server:
        assert postgres_processes(pgdata), "the embedded PostgreSQL runs from the data directory"
        with httpx.Client(base_url=server.url) as http:
            reply = http.post("/callback", params=portrait_query(), json=first)
            assert reply.json() == OK_REPLY, reply.text
            events = http.get("/events", headers=DEV_AUTH).json()["events"]
            assert [e["payload"] for e in events] == [first]
            assert http.get("/readyz").status_code == 200
    assert server.process.returncode == 0, server.log()
    assert "WARNING development default" in server.log()
    assert_postgres_stopped(pgdata)

    # Second run, two workers: the data is still there, duplicates stay duplicates.
    with running_server(env, tmp_path, workers=2) as server, httpx.Client(base_url=server.url) as http:
        events = http.get("/events", headers=DEV_AUTH).json()["events"]
        assert [e["payload"] for e in events] == [first]
        assert http.post("/callback", params=portrait_query(), json=first).json() == OK_REPLY
        second = portrait_body("persisted", 2000, Tag_Profile_IM_Nick="newer")
        assert http.post("/callback", params=portrait_query(), json=second).json() == OK_REPLY
        events = http.get("/events", headers=DEV_AUTH).json()["events"]
        assert [e["position"] for e in events] == [1, 2]
    assert server.process.returncode == 0, server.log()
    assert_postgres_stopped(pgdata)

    # The other commands use (and stop) the same embedded database.
    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 events" in verified.stdout
    migrated = run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert_postgres_stopped(pgdata)
