"""Profile reads touch a bounded number of rows however long the user's history is."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.eventstore import EventStore
from app.ingest import NewEvent, decode_callback
from app.queries import HISTORY, HISTORY_OF_TAG, INT64_MAX, INT64_MIN, PROFILE, PROFILE_AT
from tests.conftest import SDKAPPID, portrait_body, portrait_query

EVENTS = 400
OTHERS = 3000
T0 = 1_700_000_000_000
TABLES = {"events", "profiles", "profile_changes"}


def delivery(user: str, event_time: int, **items: Any) -> NewEvent:
    body = portrait_body(user, event_time, **items)
    return decode_callback(
        portrait_query(), json.dumps(body).encode(), sdkappid=SDKAPPID, received_at=datetime.now(UTC)
    )


async def long_history(db: asyncpg.Connection[Any]) -> None:
    """One user with EVENTS changes of a nickname (and of a level every 100th time), among others.

    The others make the tables big enough that the planner reads them by index, as it does in
    production; with a few hundred rows in all, a sequential scan would be the better plan.
    """
    events = [
        delivery(
            "long",
            T0 + n * 1000,
            Tag_Profile_IM_Nick=f"n{n}",
            **({"Tag_Profile_IM_Level": n} if n % 100 == 0 else {}),
        )
        for n in range(EVENTS)
    ]
    events += [delivery(f"other{n}", T0 + n, Tag_Profile_IM_Nick="x") for n in range(OTHERS)]
    for low in range(0, len(events), 500):
        await EventStore().insert_events(db, events[low : low + 500])
    await db.execute(
        "INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at, new)"
        " SELECT $1, 'filler' || (n / 10), n, 'Tag_Profile_IM_Nick', n, now(), '1'"
        "   FROM generate_series(1, 50000) AS n",
        SDKAPPID,
    )
    await db.execute("ANALYZE")


def rows_read(plan: dict[str, Any], *, filtered: bool = False) -> int:
    """Rows the plan's scans of the big tables returned (and with `filtered`, also those they read
    and filtered out), over all their loops."""
    own = 0
    if plan.get("Relation Name") in TABLES:
        own = plan.get("Actual Rows", 0) + (plan.get("Rows Removed by Filter", 0) if filtered else 0)
        own *= plan.get("Actual Loops", 1)
    return own + sum(rows_read(child, filtered=filtered) for child in plan.get("Plans", []))


async def rows_read_by(db: asyncpg.Connection[Any], sql: str, *args: Any) -> int:
    found = await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    return rows_read(json.loads(found)[0]["Plan"])


async def pages_read_by(db: asyncpg.Connection[Any], sql: str, *args: Any) -> int:
    """Buffers the statement touched: also counts index entries a scan reads past and rejects,
    which the rows it returns do not show (PostgreSQL before 18 reads on past a row comparison's
    bound on a later column)."""
    found = await db.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
    plan = json.loads(found)[0]["Plan"]
    return int(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))


async def test_profile_reads_do_not_scan_the_users_history(db: asyncpg.Connection[Any]) -> None:
    await long_history(db)
    now = await rows_read_by(db, PROFILE, SDKAPPID, "long")
    as_of = await rows_read_by(db, PROFILE_AT, SDKAPPID, "long", T0 + EVENTS * 500)
    # Two tags: a few index entries per tag and for the version, not hundreds.
    assert now < 20, now
    # The as-of version still counts the user's deliveries up to then (index only).
    assert as_of < 20 + EVENTS // 2 + 1, as_of
    # In pages: a few per tag and for the version (9 and 53 seen), not the others' entries.
    assert await pages_read_by(db, PROFILE, SDKAPPID, "long") < 20
    assert await pages_read_by(db, PROFILE, SDKAPPID, "nobody") < 20
    assert await pages_read_by(db, PROFILE_AT, SDKAPPID, "long", T0 + EVENTS * 500) < 100


async def test_a_history_page_reads_about_a_page(db: asyncpg.Connection[Any]) -> None:
    await long_history(db)
    read = await rows_read_by(
        db, HISTORY, SDKAPPID, "long", None, None, INT64_MIN, INT64_MAX, INT64_MAX, INT64_MAX, 50
    )
    # 50 events read twice (their keys to find the page's oldest, then the page), plus each tag's
    # predecessor of the page's oldest.
    assert read < 110, read
    no_filter = (None, None, INT64_MIN, INT64_MAX, INT64_MAX, INT64_MAX, 50)
    tag_filter = ("Tag_Profile_IM_Level", None, INT64_MIN, INT64_MAX, INT64_MAX, INT64_MAX, 50)
    for user, filters in (("long", no_filter), ("long", tag_filter), ("other5", no_filter)):
        # 10, 12 and 8 pages seen.
        assert await pages_read_by(db, HISTORY, SDKAPPID, user, *filters) < 30, (user, filters)


async def test_a_history_page_reads_about_a_page_among_another_apps_changes(
    db: asyncpg.Connection[Any],
) -> None:
    """With a second app's changes stored among the first one's, no index reads like a sequential
    scan any more; the page's end must still stop the scan (a dense_rank's run condition did,
    but the planner did not know it would, and read and sorted the user's whole history)."""
    await long_history(db)
    await db.execute(
        "INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at, new)"
        " SELECT $1 + 1, 'neighbour' || n, 100000 + n, 'Tag_Profile_IM_Nick', n, now(), '1'"
        "   FROM generate_series(1, 60000) AS n",
        SDKAPPID,
    )
    await db.execute("CREATE TEMP TABLE shuffled AS SELECT * FROM profile_changes ORDER BY random()")
    await db.execute("DELETE FROM profile_changes")
    await db.execute("INSERT INTO profile_changes SELECT * FROM shuffled")
    await db.execute("VACUUM ANALYZE profile_changes")
    correlation = await db.fetchval(
        "SELECT correlation FROM pg_stats WHERE tablename = 'profile_changes' AND attname = 'sdkappid'"
    )
    assert abs(correlation) < 0.9, correlation
    page = (INT64_MIN, INT64_MAX, INT64_MAX, INT64_MAX, 50)
    for plans in ("auto", "force_generic_plan"):
        await db.execute(f"SET plan_cache_mode = {plans}")
        for query, tag in ((HISTORY, None), (HISTORY_OF_TAG, "Tag_Profile_IM_Nick")):
            read = await rows_read_by(db, query, SDKAPPID, "long", tag, None, *page)
            assert read < 110, (plans, tag, read)


async def test_a_history_page_of_one_rare_tag_reads_that_tags_changes(db: asyncpg.Connection[Any]) -> None:
    await long_history(db)
    # The plan a prepared statement settles on after its first five runs: made for parameters,
    # not for the values at hand.
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute("PREPARE history_of_tag AS " + HISTORY_OF_TAG)
    # EXECUTE takes values, not the protocol's parameters (those would make a custom plan).
    execute = (
        f"EXECUTE history_of_tag({SDKAPPID}, 'long', 'Tag_Profile_IM_Level', NULL,"
        f" {INT64_MIN}, {INT64_MAX}, {INT64_MAX}, {INT64_MAX}, 50)"
    )
    found = await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + execute)
    # The user's 4 level changes and a look at each one's predecessor; not their 400 nicknames.
    read = rows_read(json.loads(found)[0]["Plan"], filtered=True)
    assert read < 20, read
    page = await db.fetchrow(execute)
    assert page is not None and page["tags"] == ["Tag_Profile_IM_Level"] * (EVENTS // 100)
    assert page["news"] == [str(n) for n in range(EVENTS - 100, -1, -100)]
