"""`profile-audit export` and `profile-audit import` as processes: files, stdin, exit codes, --help."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import OTHER_SDKAPPID, SDKAPPID, cli_env, count_rows, profile_audit_command, run_cli
from tests.integration.test_transfer import new_database, populate  # noqa: F401 - a fixture

APPS = f"{SDKAPPID},{OTHER_SDKAPPID}"


@pytest.fixture
def target(new_database: Callable[[], str]) -> str:  # noqa: F811 - the fixture imported above
    """A second fresh database at head, to import into."""
    return new_database()


def env_for(url: str, sdkappids: str = APPS) -> dict[str, str]:
    return cli_env(DATABASE_URL=url, PROFILE_AUDIT_SDKAPPID=sdkappids)


def export(url: str, cwd: Path, *args: str) -> bytes:
    """`profile-audit export ARGS` on `url`: its standard output (exit 0 required)."""
    done = subprocess.run(
        [*profile_audit_command(), "export", *args],
        env=env_for(url),
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def import_stdin(url: str, cwd: Path, data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """`profile-audit import - ARGS` with `data` on standard input."""
    return subprocess.run(
        [*profile_audit_command(), "import", "-", *args],
        env=env_for(url),
        cwd=cwd,
        input=data.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def events_in(url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await count_rows(connection, "events")
    finally:
        await connection.close()


async def intact(url: str) -> bool:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return (await verify_log(connection)).intact
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], ["export", "import"]),
        (["export", "--help"], ["--after", "JSON Lines", "GET /events"]),
        (
            ["import", "--help"],
            ["FILE", "--dry-run", "standard input", "new N, duplicate N, rejected N", "1"],
        ),
    ],
)
def test_help(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    done = run_cli(*args, env=cli_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for word in expected:
        assert word in text, word


async def test_export_then_import_into_a_fresh_database(
    client: AsyncTestClient[Any],
    database_url: str,
    target: str,
    tmp_path: Path,
) -> None:
    count = await populate(client, generated=60)

    exported = export(database_url, tmp_path)
    lines = exported.splitlines()
    assert len(lines) == count
    assert [json.loads(line)["position"] for line in lines] == list(range(1, count + 1))
    dump = tmp_path / "events.jsonl"
    dump.write_bytes(exported)

    dry = run_cli("import", "--dry-run", str(dump), env=env_for(target), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"new {count}, duplicate 0, rejected 0")
    assert await events_in(target) == 0

    done = run_cli("import", str(dump), env=env_for(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"new {count}, duplicate 0, rejected 0"
    assert export(target, tmp_path) == exported
    assert await intact(target)

    again = import_stdin(target, tmp_path, exported)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"new 0, duplicate {count}, rejected 0"
    assert await events_in(target) == count


async def test_export_after_and_import_from_stdin(
    client: AsyncTestClient[Any],
    database_url: str,
    target: str,
    tmp_path: Path,
) -> None:
    count = await populate(client, generated=20)
    whole = export(database_url, tmp_path).splitlines(keepends=True)
    assert export(database_url, tmp_path, "--after", "5") == b"".join(whole[5:])
    assert export(database_url, tmp_path, "--after", str(count)) == b""

    first = import_stdin(target, tmp_path, b"".join(whole[:5]))
    assert (first.returncode, first.stdout.strip()) == (0, "new 5, duplicate 0, rejected 0")
    rest = import_stdin(target, tmp_path, export(database_url, tmp_path, "--after", "5"))
    assert (rest.returncode, rest.stdout.strip()) == (0, f"new {count - 5}, duplicate 0, rejected 0")
    assert export(target, tmp_path) == b"".join(whole)


async def test_bad_lines_exit_1_and_are_reported_by_line_number(
    client: AsyncTestClient[Any],
    database_url: str,
    target: str,
    tmp_path: Path,
) -> None:
    count = await populate(client, generated=0)
    good = export(database_url, tmp_path).splitlines(keepends=True)
    record = json.loads(good[0])
    record["metadata"]["SdkAppid"] = "999"
    data = good[0] + b"{oops\n" + good[1] + json.dumps(record).encode() + b"\n" + b"".join(good[2:])

    done = import_stdin(target, tmp_path, data)
    assert done.returncode == 1
    assert done.stdout.strip() == f"new {count}, duplicate 0, rejected 2"
    problems = done.stderr.splitlines()
    assert len(problems) == 2, done.stderr
    assert problems[0].startswith("line 2: rejected: not JSON")
    assert problems[1].startswith("line 4: rejected: SdkAppid 999 is not configured here")
    assert await events_in(target) == count

    # the same file, dry run: the same counts, the same exit status, nothing more written
    dry = import_stdin(target, tmp_path, data, "--dry-run")
    assert dry.returncode == 1
    assert dry.stdout.startswith(f"new 0, duplicate {count}, rejected 2")
    assert dry.stderr.splitlines() == problems
    assert await events_in(target) == count


async def test_import_checks_sdkappids_of_the_target(
    client: AsyncTestClient[Any],
    database_url: str,
    target: str,
    tmp_path: Path,
) -> None:
    await populate(client, generated=0)
    dump = tmp_path / "events.jsonl"
    dump.write_bytes(export(database_url, tmp_path))
    done = run_cli("import", str(dump), env=env_for(target, sdkappids="1400000099"), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.strip().endswith(f"rejected {len(dump.read_bytes().splitlines())}")
    assert "not configured here" in done.stderr
    assert await events_in(target) == 0


def test_import_of_a_missing_file(database_url: str, tmp_path: Path) -> None:
    done = run_cli("import", str(tmp_path / "nope.jsonl"), env=env_for(database_url), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"profile-audit: error: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory"
    ]


@pytest.mark.parametrize("command", [["export"], ["import", "-"]])
def test_refused_on_a_database_not_at_head(
    empty_database_url: str, tmp_path: Path, command: list[str]
) -> None:
    done = run_cli(*command, env=env_for(empty_database_url), cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "run `profile-audit migrate` first" in lines[0]


def test_export_after_must_not_be_negative(database_url: str, tmp_path: Path) -> None:
    done = run_cli("export", "--after", "-1", env=env_for(database_url), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""


async def test_round_trip_through_the_embedded_database(
    client: AsyncTestClient[Any], database_url: str, tmp_path: Path
) -> None:
    """Without DATABASE_URL both commands run on the embedded server (started, migrated, stopped)."""
    count = await populate(client, generated=0)  # the shared fixtures: all in the dev SDKAppID
    exported = export(database_url, tmp_path)
    dump = tmp_path / "events.jsonl"
    dump.write_bytes(exported)
    embedded = cli_env(PROFILE_AUDIT_DATA_DIR=str(tmp_path / "data"))

    done = run_cli("import", str(dump), env=embedded, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"new {count}, duplicate 0, rejected 0"
    again = run_cli("export", env=embedded, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.encode() == exported
    verified = run_cli("verify", env=embedded, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
