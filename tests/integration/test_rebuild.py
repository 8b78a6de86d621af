"""Projection versions, `profile-audit rebuild`, and rebuilds that give exactly the same answers."""

from __future__ import annotations

import random
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.config import asyncpg_dsn
from app.projections import REGISTRY
from app.rebuild import LOCKED_TAIL, REBUILD_LOCK, RebuildBusy, rebuild_projections
from tests.conftest import AUTH, OTHER_SDKAPPID, SDKAPPID, cli_env, fixture_deliveries, run_cli
from tests.profile_helpers import (
    PROJECTION_TABLES,
    Delivery,
    ThreadedRebuild,
    actual_answer,
    api_snapshot,
    append,
    catalog,
    expected_answer,
    fold_from_log,
    fold_users,
    get_json,
    leftover_tables,
    physical_identity,
    post_delivery,
    projection_versions,
    random_deliveries,
    table_rows,
    user_path,
)

CODE_VERSIONS = {p.name: p.version for p in REGISTRY.values()}
AT_TIMES = (1_699_999_999_000, 1_700_000_000_123, 1_700_000_020_000, 1_700_000_040_000)
ODD_USERS = ["alice", "bob", "u/1", "u 2", "ü%3", "..", "🌸"]


async def seed(client: AsyncTestClient[Any], db: asyncpg.Connection[Any]) -> list[tuple[int, str]]:
    """A log with the shared fixtures and 400 random deliveries (ties, late arrivals, two apps)."""
    for delivery in fixture_deliveries():
        reply = await client.post("/callback", params=delivery["query"], json=delivery["body"])
        assert reply.status_code == 200, reply.text
    rng = random.Random(5)
    await append(db, random_deliveries(rng, ODD_USERS, 400, sdkappids=(SDKAPPID, OTHER_SDKAPPID)))
    return fold_users(await fold_from_log(db))


async def snapshot(client: AsyncTestClient[Any], users: list[tuple[int, str]]) -> dict[str, Any]:
    return await api_snapshot(
        client, users, at_times=AT_TIMES, page_size=7, tags=("Tag_Profile_IM_Nick", "Tag_Profile_IM_Level")
    )


async def assert_matches_fold(client: AsyncTestClient[Any], db: asyncpg.Connection[Any]) -> None:
    fold = await fold_from_log(db)
    for sdkappid, user in fold_users(fold):
        assert await actual_answer(client, sdkappid, user) == expected_answer(fold, sdkappid, user), user


async def tables(db: asyncpg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {table: await table_rows(db, table) for table in PROJECTION_TABLES}


# --- projection versions ----------------------------------------------------------------------


AS_OF = {"at": 1_700_000_000_123}


@pytest.mark.parametrize(
    ("stale", "depending", "independent"),
    [
        ("profile_changes", [("profile-history", {}), ("profile", AS_OF)], [("profile", {})]),
        ("profiles", [("profile", {})], [("profile-history", {}), ("profile", AS_OF)]),
    ],
)
async def test_a_stale_projection_is_not_ready_and_its_reads_are_503_until_rebuilt(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    stale: str,
    depending: list[tuple[str, dict[str, Any]]],
    independent: list[tuple[str, dict[str, Any]]],
) -> None:
    await seed(client, db)
    assert (await client.get("/readyz")).status_code == 200
    before = {
        (endpoint, str(params)): await get_json(
            client, user_path("alice", endpoint), {"sdkappid": SDKAPPID, **params}
        )
        for endpoint, params in depending + independent
    }
    assert all(status == 200 for status, _ in before.values())

    await db.execute("UPDATE projection_versions SET version = 0 WHERE name = $1", stale)
    ready = await client.get("/readyz")
    assert ready.status_code == 503, ready.text
    problems = ready.json()["problems"]
    assert len(problems) == 1 and f"projection {stale} " in problems[0] and "rebuild" in problems[0], problems
    for endpoint, params in depending:
        status, body = await get_json(client, user_path("alice", endpoint), {"sdkappid": SDKAPPID, **params})
        assert status == 503, (endpoint, body)
        assert stale in body["detail"] and "profile-audit rebuild" in body["detail"], body
    for endpoint, params in independent:
        answer = await get_json(client, user_path("alice", endpoint), {"sdkappid": SDKAPPID, **params})
        assert answer == before[endpoint, str(params)], f"{endpoint} does not read {stale}"
    assert (await client.get("/healthz")).status_code == 200, "alive, just not ready"
    assert (await client.get("/events", headers=AUTH)).status_code == 200, "the log does not depend on it"

    report = await rebuild_projections(db)
    assert sorted(report.projections) == sorted(REGISTRY)
    versions = await projection_versions(db)
    assert {name: v[0] for name, v in versions.items()} == CODE_VERSIONS
    head = await db.fetchval("SELECT position FROM log_head")
    assert all(v[1] == head and v[2] is not None for v in versions.values())
    assert report.events_replayed == report.last_position == head
    assert (await client.get("/readyz")).status_code == 200
    after = {
        (endpoint, str(params)): await get_json(
            client, user_path("alice", endpoint), {"sdkappid": SDKAPPID, **params}
        )
        for endpoint, params in depending + independent
    }
    assert after == before


async def test_a_missing_or_newer_projection_version_is_stale_too(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    await seed(client, db)
    await db.execute("DELETE FROM projection_versions WHERE name = 'profiles'")
    await db.execute("UPDATE projection_versions SET version = version + 1 WHERE name = 'profile_changes'")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert sorted(p.split()[1] for p in ready.json()["problems"]) == ["profile_changes", "profiles"]
    missing = "projection profiles is at version None"
    newer = f"projection profile_changes is at version {CODE_VERSIONS['profile_changes'] + 1}"
    for endpoint, params, problem in [
        ("profile", {}, missing),
        ("profile", {"at": AT_TIMES[-1]}, newer),
        ("profile-history", {}, newer),
    ]:
        status, body = await get_json(client, user_path("alice", endpoint), {"sdkappid": SDKAPPID, **params})
        assert status == 503, (endpoint, params, body)
        assert problem in body["detail"], (endpoint, params, body)
    await rebuild_projections(db)
    assert {name: v[0] for name, v in (await projection_versions(db)).items()} == CODE_VERSIONS
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("stale", "depending"),
    [
        (
            "profile_changes",
            [
                ("nobody", "profile-history", {}),
                ("alice", "profile-history", {"tag": "Tag_None"}),
                ("alice", "profile-history", {"cursor": "MDow"}),  # (0, 0): before everything
                ("nobody", "profile", {"at": AT_TIMES[-1]}),
                ("alice", "profile", {"at": 0}),
            ],
        ),
        ("profiles", [("nobody", "profile", {})]),
    ],
)
async def test_a_stale_projection_is_503_even_where_the_answer_would_be_404_or_empty(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    stale: str,
    depending: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """The versions come back with every read, also one that finds nothing: stale wins over 404."""
    await seed(client, db)
    fresh = [
        (await get_json(client, user_path(user, endpoint), {"sdkappid": SDKAPPID, **params}))[0]
        for user, endpoint, params in depending
    ]
    assert all(status in (200, 404) for status in fresh), fresh
    await db.execute("UPDATE projection_versions SET version = 0 WHERE name = $1", stale)
    for user, endpoint, params in depending:
        status, body = await get_json(client, user_path(user, endpoint), {"sdkappid": SDKAPPID, **params})
        assert status == 503, (user, endpoint, params, body)
        assert f"projection {stale} is at version 0" in body["detail"], body
        assert "profile-audit rebuild" in body["detail"], body


async def test_a_version_row_of_no_known_projection_is_ignored(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    await seed(client, db)
    before = await api_snapshot(client, [(SDKAPPID, "alice")], at_times=AT_TIMES[-1:], page_size=3, tags=())
    assert before[f"{SDKAPPID}/alice"]["profile"][0] == 200
    await db.execute("INSERT INTO projection_versions (name, version) VALUES ('retired_projection', 7)")
    assert (await client.get("/readyz")).status_code == 200
    after = await api_snapshot(client, [(SDKAPPID, "alice")], at_times=AT_TIMES[-1:], page_size=3, tags=())
    assert after == before


# --- the CLI ----------------------------------------------------------------------------------


async def test_cli_rebuild_reports_and_fixes_stale_projections(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    await seed(client, db)
    head = await db.fetchval("SELECT position FROM log_head")
    await db.execute("UPDATE projection_versions SET version = 0")
    env = cli_env(DATABASE_URL=database_url, PROFILE_AUDIT_SDKAPPID=f"{SDKAPPID},{OTHER_SDKAPPID}")

    done = run_cli("rebuild", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{head} events replayed" in done.stdout, done.stdout
    assert " s (" in done.stdout and "events/s" in done.stdout, done.stdout  # elapsed and rate
    assert "profiles" in done.stdout and "profile_changes" in done.stdout
    assert "replay" in done.stderr, "progress is shown"
    assert {name: v[0] for name, v in (await projection_versions(db)).items()} == CODE_VERSIONS
    assert (await client.get("/readyz")).status_code == 200
    await assert_matches_fold(client, db)

    # Only the named projection.
    versions = await projection_versions(db)
    one = run_cli("rebuild", "profiles", env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "rebuilt profiles:" in one.stdout, one.stdout
    after = await projection_versions(db)
    assert after["profile_changes"] == versions["profile_changes"]
    assert after["profiles"][2] > versions["profiles"][2]

    # An unknown name: non-zero, one line naming it, nothing touched.
    identity = {t: await physical_identity(db, t) for t in PROJECTION_TABLES}
    bad = run_cli("rebuild", "nosuch", env=env, cwd=tmp_path)
    assert bad.returncode != 0
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch" in lines[0] and "profiles" in lines[0], bad.stderr
    assert {t: await physical_identity(db, t) for t in PROJECTION_TABLES} == identity
    assert await projection_versions(db) == after

    # While another rebuild holds the lock: non-zero with a one-line reason.
    side = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await side.execute("SELECT pg_advisory_lock(hashtext($1))", REBUILD_LOCK)
        busy = run_cli("rebuild", env=env, cwd=tmp_path)
    finally:
        await side.close()
    assert busy.returncode != 0
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and "another rebuild or a projection check is running" in lines[0], busy.stderr
    assert await projection_versions(db) == after

    helped = run_cli("rebuild", "--help", env=env, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "profile-audit rebuild" in helped.stdout and "Projections to rebuild" in helped.stdout, (
        helped.stdout
    )


# --- rebuilds give exactly the same answers ---------------------------------------------------


async def test_rebuild_after_emptying_the_projections_restores_identical_answers(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    users = await seed(client, db)
    assert len(users) == 2 * len(ODD_USERS) + 2  # + carol and id1 from the fixtures
    before, rows_before = await snapshot(client, users), await tables(db)
    await assert_matches_fold(client, db)

    await db.execute("DELETE FROM profiles")
    await db.execute("DELETE FROM profile_changes")
    status, _ = await get_json(client, user_path("alice"), {"sdkappid": SDKAPPID})
    assert status == 404, "the projections really were emptied"

    await rebuild_projections(db)
    assert await snapshot(client, users) == before
    assert await tables(db) == rows_before
    assert await leftover_tables(db) == []

    # The rebuilt tables keep being maintained inline: a new change and a late one re-link `old`.
    await post_delivery(client, Delivery("alice", 1_800_000_000_000, [("Tag_Profile_IM_Nick", "after")]))
    await post_delivery(client, Delivery("alice", 1, [("Tag_Profile_IM_Nick", "very first")]))
    await assert_matches_fold(client, db)
    after_inline = await tables(db)
    await rebuild_projections(db)
    assert await tables(db) == after_inline, "inline and rebuilt projections agree row for row"


async def test_rebuilding_one_projection_leaves_the_other_untouched(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    users = await seed(client, db)
    before, rows_before = await snapshot(client, users), await tables(db)

    for rebuilt, other in (("profiles", "profile_changes"), ("profile_changes", "profiles")):
        untouched = await physical_identity(db, other)
        other_version = (await projection_versions(db))[other]
        await db.execute(f"DELETE FROM {rebuilt}")
        report = await rebuild_projections(db, [rebuilt])
        assert report.projections == [rebuilt]
        assert await physical_identity(db, other) == untouched, f"{other} was rewritten"
        assert (await projection_versions(db))[other] == other_version
        assert await tables(db) == rows_before
        assert await snapshot(client, users) == before


async def test_a_second_rebuild_while_one_holds_the_lock_is_refused_and_touches_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    users = await seed(client, db)
    before = await snapshot(client, users)
    await db.execute("UPDATE projection_versions SET version = 0 WHERE name = 'profiles'")
    state = (
        {t: await physical_identity(db, t) for t in PROJECTION_TABLES},
        await projection_versions(db),
        await catalog(db),
    )

    side = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await side.execute("SELECT pg_advisory_lock(hashtext($1))", REBUILD_LOCK)
        with pytest.raises(RebuildBusy, match="another rebuild"):
            await rebuild_projections(db)
        with pytest.raises(RebuildBusy):
            await rebuild_projections(db, ["profile_changes"])
        assert (
            {t: await physical_identity(db, t) for t in PROJECTION_TABLES},
            await projection_versions(db),
            await catalog(db),
        ) == state
        assert await leftover_tables(db) == []
        # The refused call took no lock of its own: the holder is still the only one.
        held = await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert held == 1
    finally:
        await side.close()

    await rebuild_projections(db)  # free again
    assert await snapshot(client, users) == before
    assert (await client.get("/readyz")).status_code == 200


async def test_two_rebuilds_at_once_one_runs_the_other_is_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    users = await seed(client, db)
    before, rows_before = await snapshot(client, users), await tables(db)
    first = ThreadedRebuild(database_url, pause_when=lambda phase, done, total: phase == "build")
    first.start()
    await first.wait_paused()  # mid-rebuild: a shadow table is built, nothing swapped yet
    try:
        with pytest.raises(RebuildBusy):
            await rebuild_projections(db)
        assert await tables(db) == rows_before
    finally:
        first.resume()
    report = await first.result()
    assert sorted(report.projections) == sorted(REGISTRY)
    assert await tables(db) == rows_before
    assert await snapshot(client, users) == before
    assert await leftover_tables(db) == []


async def test_leftovers_of_an_interrupted_rebuild_do_not_break_the_next(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    users = await seed(client, db)
    before, rows_before, names_before = await snapshot(client, users), await tables(db), await catalog(db)

    # 1. Stale tables as a killed run leaves them: shadows with their indexes, a full stage, all
    #    holding rows that must not leak into the result.
    await db.execute("CREATE TABLE profiles__shadow (LIKE profiles INCLUDING DEFAULTS)")
    await db.execute("CREATE UNIQUE INDEX profiles_pkey__shadow ON profiles__shadow (user_id, sdkappid, tag)")
    await db.execute(
        "INSERT INTO profiles__shadow VALUES ($1, 'ghost', 'Tag_Profile_IM_Nick', '\"boo\"', 1, 1)", SDKAPPID
    )
    await db.execute("CREATE TABLE profile_changes__shadow (LIKE profile_changes INCLUDING DEFAULTS)")
    await db.execute(
        "CREATE TABLE profile_items__stage (sdkappid bigint, user_id text, position bigint, event_time bigint,"
        " received_at timestamptz, operator_account text, opt_platform text, client_ip text, tag text,"
        " value jsonb)"
    )
    await db.execute(
        "INSERT INTO profile_items__stage VALUES ($1, 'ghost', 99999, 1, now(), 'x', 'x', 'x', 'T', '1')",
        SDKAPPID,
    )
    await rebuild_projections(db)
    assert await snapshot(client, users) == before
    assert await tables(db) == rows_before
    assert await catalog(db) == names_before
    assert await leftover_tables(db) == []

    # 2. A run that fails part-way (after one shadow table is built and indexed).
    crashed = ThreadedRebuild(
        database_url,
        pause_when=lambda phase, done, total: (phase, done) == ("build", 1),
        fail_on_resume=True,
    )
    crashed.start()
    await crashed.wait_paused()
    crashed.resume()
    with pytest.raises(RuntimeError, match="interrupted"):
        await crashed.result()
    assert await leftover_tables(db), "the failed run left its shadow and stage behind"
    assert await tables(db) == rows_before, "the live tables were not touched"
    assert await snapshot(client, users) == before
    await rebuild_projections(db)
    assert await tables(db) == rows_before and await catalog(db) == names_before
    assert await leftover_tables(db) == []

    # 3. A run whose database session is killed mid-way: its advisory lock goes with the session.
    killed = ThreadedRebuild(
        database_url, pause_when=lambda phase, done, total: (phase, done) == ("build", 1)
    )
    killed.start()
    await killed.wait_paused()
    assert await db.fetchval("SELECT pg_terminate_backend($1)", killed.server_pid)
    killed.resume()
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await killed.result()
    await rebuild_projections(db)
    assert await snapshot(client, users) == before
    assert await tables(db) == rows_before and await catalog(db) == names_before
    assert await leftover_tables(db) == []

    # 4. A run that dies after its swap committed, before it dropped the tables it replaced.
    swapped = ThreadedRebuild(
        database_url, pause_when=lambda phase, done, total: phase == "swap", fail_on_resume=True
    )
    swapped.start()
    await swapped.wait_paused()
    swapped.resume()
    with pytest.raises(RuntimeError, match="interrupted"):
        await swapped.result()
    assert "profile_changes__retired" in await leftover_tables(db)
    assert await snapshot(client, users) == before and await catalog(db) == names_before
    await rebuild_projections(db)
    assert await tables(db) == rows_before and await catalog(db) == names_before
    assert await leftover_tables(db) == []


async def test_index_and_constraint_names_are_the_same_after_rebuilds(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    """Regression: the primary keys were lost on the swap (pg_constraint.contype came back as bytes)."""
    await seed(client, db)
    names = await catalog(db)
    assert {c[1] for c in names["constraints"] if c[2] == "p"} == {"profiles_pkey", "profile_changes_pkey"}
    assert {i[1] for i in names["indexes"]} >= {
        "profiles_pkey",
        "profile_changes_pkey",
        "profile_changes_by_user_time",
    }
    for names_arg in ((), (), ["profiles"], ["profile_changes"], ()):
        await rebuild_projections(db, names_arg)
        assert await catalog(db) == names, names_arg
        assert await leftover_tables(db) == []
    # The primary key still guards the table (not just a look-alike unique index).
    row = await db.fetchrow("SELECT * FROM profiles LIMIT 1")
    with pytest.raises(asyncpg.UniqueViolationError, match="profiles_pkey"):
        await db.execute(
            "INSERT INTO profiles SELECT * FROM profiles WHERE (sdkappid, user_id, tag) = ($1, $2, $3)",
            row["sdkappid"],
            row["user_id"],
            row["tag"],
        )


async def reloptions(db: asyncpg.Connection[Any], table: str) -> list[str] | None:
    options: list[str] | None = await db.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table
    )
    return options


async def test_the_swap_waits_out_a_vacuum_without_holding_up_appends(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    """Regression: the swap took the append lock, then waited for autovacuum to let go of a table."""
    await seed(client, db)
    await db.execute("ALTER TABLE profile_changes SET (autovacuum_vacuum_scale_factor = 0.02)")
    # What a (auto)vacuum of profile_changes holds; a session holding it is not cancelled.
    vacuum = await asyncpg.connect(asyncpg_dsn(database_url))
    rebuild = ThreadedRebuild(database_url)
    try:
        transaction = vacuum.transaction()
        await transaction.start()
        await vacuum.execute("LOCK TABLE profile_changes IN SHARE UPDATE EXCLUSIVE MODE")
        rebuild.start()
        await rebuild.wait_for_lock(db)
        assert rebuild.phases[-1][0] == "build", "it waits at the swap, with every shadow table built"
        for table in PROJECTION_TABLES:
            assert await reloptions(db, f"{table}__shadow") == ["autovacuum_enabled=false"]

        # Appends go on while the swap waits (the callback would answer 503 after 2 s otherwise).
        late = Delivery("bob", 1_700_000_090_000, [("Tag_Profile_IM_Nick", "during the wait")])
        await post_delivery(client, late)
        await append(db, random_deliveries(random.Random(9), ODD_USERS, LOCKED_TAIL + 50))
        await transaction.commit()
        report = await rebuild.result()
    finally:
        await vacuum.close()

    # What arrived during the wait was caught up after it, before the append lock was taken.
    assert report.events_caught_up_under_lock == 0
    assert report.last_position == await db.fetchval("SELECT position FROM log_head")
    await assert_matches_fold(client, db)  # the fold of the log includes the late delivery
    assert (
        await db.fetchval(
            "SELECT count(*) FROM profile_changes WHERE new = to_jsonb('during the wait'::text)"
        )
        == 1
    )
    # The swapped-in tables keep the replaced tables' storage parameters, autovacuum on.
    assert await reloptions(db, "profile_changes") == ["autovacuum_vacuum_scale_factor=0.02"]
    assert await reloptions(db, "profiles") is None


async def test_a_long_tail_is_caught_up_while_appends_go_on(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    """Regression: the whole tail was caught up under the append lock, past the callback deadline."""
    await seed(client, db)
    rebuild = ThreadedRebuild(
        database_url, pause_when=lambda phase, done, total: phase == "build" and done == total
    )
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rebuild.start()
        await rebuild.wait_paused()  # every shadow table built up to the snapshot
        tail = random_deliveries(random.Random(8), [*ODD_USERS, "tail-user"], LOCKED_TAIL + 50)
        await append(db, tail)
        # Hold the catch-up at its first write to the history's shadow table.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE profile_changes__shadow IN SHARE MODE")
        rebuild.resume()
        await rebuild.wait_for_lock(db)
        assert rebuild.phases[-1][0] == "catch-up"

        late = Delivery("bob", 1_700_000_090_000, [("Tag_Profile_IM_Nick", "during the catch-up")])
        await post_delivery(client, late)  # 503 if the catch-up held the append lock
        await transaction.commit()
        report = await rebuild.result()
    finally:
        await blocker.close()

    # The tail was caught up before the swap; appends waited only for the delivery made meanwhile.
    assert report.events_caught_up_under_lock == 1
    assert report.last_position == await db.fetchval("SELECT position FROM log_head")
    await assert_matches_fold(client, db)


async def test_a_rebuild_interrupted_while_catching_up_leaves_the_live_tables(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], database_url: str
) -> None:
    """The catch-up rounds run in the swap's transaction: a run stopped there changes nothing."""
    users = await seed(client, db)
    crashed = ThreadedRebuild(
        database_url,
        pause_when=lambda phase, done, total: phase == "catch-up" and done == total > 0,
        fail_on_resume=True,
    )
    vacuum = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        # Hold the run before its catch-up (as a vacuum would) while a long tail is appended.
        transaction = vacuum.transaction()
        await transaction.start()
        await vacuum.execute("LOCK TABLE profile_changes IN SHARE UPDATE EXCLUSIVE MODE")
        crashed.start()
        await crashed.wait_for_lock(db)
        await append(db, random_deliveries(random.Random(10), ODD_USERS, LOCKED_TAIL + 50))
        before, rows_before, versions_before = (
            await snapshot(client, users),
            await tables(db),
            await projection_versions(db),
        )
        await transaction.commit()
        await crashed.wait_paused()  # its first round is applied to the shadow tables
        crashed.resume()
        with pytest.raises(RuntimeError, match="interrupted"):
            await crashed.result()
    finally:
        await vacuum.close()

    assert await tables(db) == rows_before and await projection_versions(db) == versions_before
    assert await snapshot(client, users) == before
    assert await leftover_tables(db), "the stopped run left its shadow tables behind"
    report = await rebuild_projections(db)
    assert report.events_caught_up_under_lock == 0
    assert await tables(db) == rows_before and await snapshot(client, users) == before
    assert await leftover_tables(db) == []


# --- several connections ------------------------------------------------------------------------


async def test_a_rebuild_on_three_connections_gives_the_same_tables(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = await seed(client, db)
    before, rows_before = await snapshot(client, users), await tables(db)
    head = int(await db.fetchval("SELECT position FROM log_head"))
    monkeypatch.setattr("app.rebuild.CHUNK", 3)  # many staging jobs, shared by the connections
    await db.execute("DELETE FROM profiles")
    await db.execute("DELETE FROM profile_changes")
    helpers = [await asyncpg.connect(asyncpg_dsn(database_url)) for _ in range(2)]
    seen: list[tuple[str, int, int]] = []
    try:
        report = await rebuild_projections(
            db, helpers=helpers, progress=lambda phase, done, total: seen.append((phase, done, total))
        )
    finally:
        for helper in helpers:
            await helper.close()
    assert report.events_replayed == head
    assert await tables(db) == rows_before
    assert await snapshot(client, users) == before
    assert await leftover_tables(db) == []
    replayed = [done for phase, done, _ in seen if phase == "replay"]
    assert replayed == sorted(replayed) and replayed[-1] == head and len(replayed) > head // 3
    assert [s for s in seen if s[0] == "build"] == [("build", 1, 2), ("build", 2, 2)]


async def test_a_helper_failing_mid_rebuild_fails_it_and_leaves_the_live_tables(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed(client, db)
    rows_before = await tables(db)
    identity = {table: await physical_identity(db, table) for table in PROJECTION_TABLES}
    monkeypatch.setattr("app.rebuild.CHUNK", 3)
    # A helper that may connect but not read the log: its first job fails while the others run.
    role = f"rebuild_helper_{secrets.token_hex(4)}"
    await db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        helper = await asyncpg.connect(asyncpg_dsn(database_url), user=role)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await rebuild_projections(db, helpers=[helper])
        finally:
            await helper.close()
    finally:
        await db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert {table: await physical_identity(db, table) for table in PROJECTION_TABLES} == identity
    other = await asyncpg.connect(asyncpg_dsn(database_url))  # advisory locks are re-entrant per session
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", REBUILD_LOCK), (
            "lock released"
        )
    finally:
        await other.close()
    # The leftovers do not stand in the way of the next rebuild.
    await rebuild_projections(db)
    assert await tables(db) == rows_before
    assert await leftover_tables(db) == []
