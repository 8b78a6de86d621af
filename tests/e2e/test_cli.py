"""The `profile-audit` command line, run as the installed console script in a subprocess."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.cli import cli
from app.config import asyncpg_dsn
from app.database import head_revision
from app.eventstore import EventStore
from app.ingest import decode_callback
from app.rebuild import REBUILD_LOCK
from tests.conftest import (
    API_TOKEN,
    REPO_ROOT,
    SDKAPPID,
    cli_env,
    portrait_body,
    portrait_query,
    run_cli,
    running_server,
)

pytestmark = pytest.mark.e2e

ALEMBIC = (
    [str(Path(sys.executable).parent / "alembic")]
    if (Path(sys.executable).parent / "alembic").is_file()
    else [sys.executable, "-m", "alembic"]
)
COMMANDS = sorted(c.name or (c.callback.__name__ if c.callback else "") for c in cli.registered_commands)


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    return cli_env(DATABASE_URL=database_url, PROFILE_AUDIT_SDKAPPID=str(SDKAPPID), **extra)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line reason, got:\n{stderr}"
    assert lines[0].startswith("profile-audit: error: "), lines[0]
    return lines[0]


def test_the_documented_commands_exist() -> None:
    assert {"serve", "migrate", "verify"} <= set(COMMANDS)


def test_top_level_help(tmp_path: Path) -> None:
    result = run_cli("--help", env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(tmp_path: Path, command: str) -> None:
    result = run_cli(command, "--help", env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert command in result.stdout
    if command == "serve":
        for option in ("--host", "--port", "--workers"):
            assert option in result.stdout


def test_unknown_command_fails(tmp_path: Path) -> None:
    result = run_cli("no-such-command", env=cli_env(), cwd=tmp_path)
    assert result.returncode != 0


async def test_migrate_an_empty_database_then_verify(empty_database_url: str, tmp_path: Path) -> None:
    env = service_env(empty_database_url)
    migrated = run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert head_revision() in migrated.stdout  # type: ignore[operator]

    connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
    try:
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        assert await connection.fetchval("SELECT to_regclass('events') IS NOT NULL")
    finally:
        await connection.close()

    again = run_cli("migrate", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr

    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "intact" in verified.stdout
    assert "0 events" in verified.stdout


async def append_some(database_url: str, count: int) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        events = [
            decode_callback(
                portrait_query(),
                json.dumps(portrait_body(f"user{i}", 1000 + i)).encode(),
                sdkappid=SDKAPPID,
                received_at=datetime.now(UTC),
            )
            for i in range(count)
        ]
        appended = await EventStore().insert_events(connection, events)
        assert [a.position for a in appended] == list(range(1, count + 1))
    finally:
        await connection.close()


async def tamper(database_url: str, statement: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("ALTER TABLE events DISABLE TRIGGER USER")
        await connection.execute(statement)
    finally:
        await connection.close()


async def test_verify_exits_1_with_the_first_bad_position(database_url: str, tmp_path: Path) -> None:
    await append_some(database_url, 5)
    env = service_env(database_url)
    intact = run_cli("verify", env=env, cwd=tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "5 events" in intact.stdout

    # Each tampering is earlier in the log than the one before: verify names the first.
    for statement, position in [
        ("DELETE FROM events WHERE position = 5", 5),
        ("UPDATE events SET body = replace(body, 'user2', 'userX') WHERE position = 3", 3),
        ("UPDATE events SET hash = sha256(hash) WHERE position = 2", 2),
    ]:
        await tamper(database_url, statement)
        broken = run_cli("verify", env=env, cwd=tmp_path)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"position {position}" in broken.stdout, broken.stdout


async def test_verify_projections_compares_them_with_the_log_and_exits_1_when_one_differs(
    database_url: str, tmp_path: Path
) -> None:
    await append_some(database_url, 5)
    env = service_env(database_url)
    plain = run_cli("verify", env=env, cwd=tmp_path)
    assert plain.returncode == 0 and "projection" not in plain.stdout, plain.stdout + plain.stderr
    checked = run_cli("verify", "--projections", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "projection profiles: matches the log up to position 5 (5 rows)" in checked.stdout, checked.stdout
    assert "projection profile_changes: matches the log up to position 5 (5 rows)" in checked.stdout
    # Off a terminal, progress goes to standard error as a line each tenth of a phase.
    progress = checked.stderr.splitlines()
    assert "verify: log 5/5" in progress and "verify: projections 3/3" in progress, checked.stderr
    assert "verify: projections" not in plain.stderr

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE profiles SET value = '\"forged\"' WHERE user_id = 'user3'")
    finally:
        await connection.close()
    differs = run_cli("verify", "--projections", env=env, cwd=tmp_path)
    assert differs.returncode == 1, differs.stdout + differs.stderr
    assert "intact: 5 events" in differs.stdout, "the log itself is intact"
    assert "projection profiles: DIFFERS from the log up to position 5: 1 missing, 1 unexpected (5 rows)" in (
        differs.stdout
    )
    assert '"user_id":"user3"' in differs.stdout and '"value":"forged"' in differs.stdout, differs.stdout
    assert "projection profile_changes: matches" in differs.stdout

    # While a rebuild holds the rebuild lock: non-zero, with a one-line reason.
    side = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await side.execute("SELECT pg_advisory_lock(hashtext($1))", REBUILD_LOCK)
        busy = run_cli("verify", "--projections", env=env, cwd=tmp_path)
    finally:
        await side.close()
    assert busy.returncode != 0
    assert "a rebuild or another projection check is running" in one_line_error(busy.stderr), busy.stderr


def test_serve_refuses_a_database_without_schema(empty_database_url: str, tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "1", env=service_env(empty_database_url), cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert "schema" in line
    assert "profile-audit migrate" in line


async def test_serve_refuses_a_schema_at_another_revision(database_url: str, tmp_path: Path) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    finally:
        await connection.close()
    result = run_cli("serve", "--port", "1", env=service_env(database_url), cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    line = one_line_error(result.stderr)
    assert "ffffffffffff" in line


def test_serve_with_an_unreachable_database_fails_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres@/profile_audit?host={tmp_path}"
    result = run_cli("serve", "--port", "1", env=service_env(url), cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    one_line_error(result.stderr)


def test_serve_needs_the_sdkappid_with_database_url(database_url: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=database_url)
    result = run_cli("serve", "--port", "1", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "PROFILE_AUDIT_SDKAPPID" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "variable",
    [
        {"PROFILE_AUDIT_SDKAPPID": "abc"},
        {"DATABASE_URL": "mysql://nope"},
    ],
    ids=lambda v: next(iter(v)),
)
def test_bad_settings_fail_in_one_line(database_url: str, tmp_path: Path, variable: dict[str, str]) -> None:
    env = service_env(database_url)
    env.update(variable)
    result = run_cli("verify", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    one_line_error(result.stderr)


async def test_alembic_upgrade_head_from_the_repo_root(empty_database_url: str, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *ALEMBIC,
        "upgrade",
        "head",
        cwd=REPO_ROOT,
        env=cli_env(DATABASE_URL=empty_database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()

    connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
    try:
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await connection.close()

    # The service accepts what Alembic built.
    env = service_env(empty_database_url, PROFILE_AUDIT_API_TOKENS=API_TOKEN)
    with running_server(env, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            reply = await http.post("/callback", params=portrait_query(), json=portrait_body())
            assert reply.status_code == 200, reply.text
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 events" in verified.stdout
