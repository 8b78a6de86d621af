"""`verify_projections`: each projection's table against the fold of the log, row for row."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import asyncpg
import pytest

from app.config import asyncpg_dsn
from app.rebuild import REBUILD_LOCK, RebuildBusy, rebuild_projections
from app.verify import ProjectionCheck, verify_projections
from tests.conftest import OTHER_SDKAPPID, SDKAPPID
from tests.profile_helpers import append, leftover_tables, random_deliveries

USERS = ["alice", "bob", "u/1", "🌸"]


async def seed(db: asyncpg.Connection[Any]) -> int:
    """400 deliveries (ties, late arrivals, two apps) through the inline projections; the log head."""
    await append(db, random_deliveries(random.Random(8), USERS, 400, sdkappids=(SDKAPPID, OTHER_SDKAPPID)))
    return int(await db.fetchval("SELECT position FROM log_head"))


def by_name(checks: list[ProjectionCheck]) -> dict[str, ProjectionCheck]:
    return {check.name: check for check in checks}


async def counts(db: asyncpg.Connection[Any]) -> dict[str, int]:
    return {t: int(await db.fetchval(f"SELECT count(*) FROM {t}")) for t in ("profiles", "profile_changes")}


async def test_inline_projections_are_the_fold_of_the_log(db: asyncpg.Connection[Any]) -> None:
    head = await seed(db)
    checked_up_to, checks = await verify_projections(db)
    assert checked_up_to == head
    rows = await counts(db)
    assert by_name(checks) == {
        name: ProjectionCheck(name, rows=rows[name]) for name in ("profiles", "profile_changes")
    }
    assert all(check.matches for check in checks)
    assert await leftover_tables(db) == []
    # The rebuild lock is free again: a rebuild can run, and its tables pass the check too.
    await rebuild_projections(db)
    assert all(check.matches for check in (await verify_projections(db))[1])


async def test_every_row_that_differs_from_the_fold_is_counted(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    forged = await db.fetchrow(
        "UPDATE profiles SET value = '\"forged\"'"
        " WHERE (sdkappid, user_id, tag) ="
        " (SELECT sdkappid, user_id, tag FROM profiles ORDER BY sdkappid, user_id, tag LIMIT 1)"
        " RETURNING user_id, tag"
    )
    assert forged is not None
    await db.execute(
        "DELETE FROM profile_changes WHERE (position, tag) IN"
        " (SELECT position, tag FROM profile_changes ORDER BY position LIMIT 2)"
    )
    await db.execute(
        "INSERT INTO profile_changes SELECT sdkappid, user_id, position, 'Tag_Profile_Custom_Planted',"
        " event_time, received_at, operator_account, opt_platform, client_ip, new"
        " FROM profile_changes ORDER BY position DESC LIMIT 1"
    )

    _, checks = await verify_projections(db)
    rows = await counts(db)
    profiles, changes = by_name(checks)["profiles"], by_name(checks)["profile_changes"]
    assert (profiles.rows, profiles.missing, profiles.unexpected) == (rows["profiles"], 1, 1)
    assert (changes.rows, changes.missing, changes.unexpected) == (rows["profile_changes"], 2, 1)
    assert not profiles.matches and not changes.matches

    (missing,) = [e for e in profiles.examples if e.startswith("missing: ")]
    (unexpected,) = [e for e in profiles.examples if e.startswith("unexpected: ")]
    row = json.loads(unexpected.removeprefix("unexpected: "))
    assert (row["user_id"], row["tag"], row["value"]) == (forged["user_id"], forged["tag"], "forged")
    assert json.loads(missing.removeprefix("missing: "))["value"] != "forged"
    assert [e.split(":")[0] for e in changes.examples] == ["missing", "missing", "unexpected"]
    assert "Tag_Profile_Custom_Planted" in changes.examples[2]


async def test_a_stale_projection_is_reported_and_not_compared(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    await db.execute("UPDATE projection_versions SET version = 0 WHERE name = 'profiles'")
    await db.execute("DELETE FROM profiles")  # would differ, were it compared
    checks = by_name((await verify_projections(db))[1])
    assert (
        checks["profiles"].stale is not None and "profile-audit rebuild profiles" in checks["profiles"].stale
    )
    assert not checks["profiles"].matches
    assert checks["profile_changes"].matches

    # Only the named projections are checked.
    _, named = await verify_projections(db, ["profile_changes"])
    assert [c.name for c in named] == ["profile_changes"] and named[0].matches


async def test_a_check_and_a_rebuild_exclude_each_other(
    db: asyncpg.Connection[Any], database_url: str
) -> None:
    await seed(db)
    side = await asyncpg.connect(asyncpg_dsn(database_url))
    third = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await side.execute("SELECT pg_advisory_lock(hashtext($1))", REBUILD_LOCK)  # as a rebuild does
        with pytest.raises(RebuildBusy, match="a rebuild or another projection check is running"):
            await verify_projections(db)
        await side.execute("SELECT pg_advisory_unlock(hashtext($1))", REBUILD_LOCK)

        # A check that holds the lock, held up at its first look at profile_changes: a rebuild,
        # which would swap the tables it reads, is refused.
        await side.execute("BEGIN; LOCK TABLE profile_changes IN ACCESS EXCLUSIVE MODE")
        check = asyncio.ensure_future(verify_projections(db))
        pid = db.get_server_pid()
        while not await side.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            assert not check.done(), check.result()
            await asyncio.sleep(0.01)
        with pytest.raises(RebuildBusy):
            await rebuild_projections(third)
        await side.execute("ROLLBACK")
        _, checks = await check
        assert all(c.matches for c in checks)
        await rebuild_projections(third)  # the check let go of the lock
    finally:
        await side.close()
        await third.close()
