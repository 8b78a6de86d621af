"""The append's plans are made once per connection (generic): they must read the log and the
projections through their indexes whatever the tables' statistics, even those of empty tables."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.config import asyncpg_dsn
from app.eventstore import EventStore
from app.ingest import NewEvent, decode_callback
from tests.conftest import SDKAPPID, portrait_body, portrait_query

LARGE_TABLES = ("events", "profile_changes", "profiles")
LOOKUP_INDEXES = ("events_delivery_once", "events_user_version", "events_pkey")


def deliveries(users: int, per_user: int, *, start: int = 0, late: bool = False) -> list[NewEvent]:
    """`per_user` changes of three tags for each of `users` users (EventTimes going back if `late`)."""
    events = []
    for n in range(per_user):
        for u in range(users):
            event_time = 1_700_000_000_000 + (start + n) * (-1 if late else 1)
            body = portrait_body(
                f"plan-{u}", event_time, Tag_Profile_IM_Nick=f"n{start + n}", Tag_Profile_IM_Level=n
            )
            events.append(
                decode_callback(
                    portrait_query(),
                    json.dumps(body).encode(),
                    sdkappid=SDKAPPID,
                    received_at=datetime.now(UTC),
                )
            )
    return events


async def load_auto_explain(connection: asyncpg.Connection[Any], settings: str = "") -> None:
    """auto_explain on `connection`, nested statements too, off until plans_of_one_append turns it on."""
    try:
        await connection.execute("LOAD 'auto_explain'")
    except asyncpg.PostgresError as exc:  # a server without it, or a user who may not load it
        pytest.skip(f"auto_explain is not available here: {exc}")
    await connection.execute(
        settings + "SET auto_explain.log_nested_statements = on; SET auto_explain.log_min_duration = -1;"
        " SET client_min_messages = log"
    )


async def plans_of_one_append(connection: asyncpg.Connection[Any], events: list[NewEvent]) -> str:
    """The plans (auto_explain, nested statements too) the append ran for `events`."""
    messages: list[str] = []

    def collect(_connection: Any, message: Any) -> None:
        messages.append(str(message.message))

    connection.add_log_listener(collect)
    try:
        await connection.execute("SET auto_explain.log_min_duration = 0")
        await EventStore().insert_events(connection, events)
        await connection.execute("SET auto_explain.log_min_duration = -1")
    finally:
        connection.remove_log_listener(collect)
    return "\n".join(messages)


def assert_indexed(plans: str) -> None:
    assert "append_events" in plans and "profile_changes" in plans, "auto_explain saw the append"
    for table in LARGE_TABLES:
        assert not re.search(rf"Seq Scan on {table}\b", plans), (table, plans)
    assert "Incremental Sort" not in plans, plans
    for index in LOOKUP_INDEXES:
        assert f" using {index} on " in plans, (index, plans)


async def test_plans_made_on_empty_tables_and_after_analyze_read_the_indexes(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await load_auto_explain(connection)
        # First append on empty tables: the connection's plans are made now, from no statistics.
        first = await plans_of_one_append(connection, deliveries(5, 2))
        assert "Index" in first
        # Same plans, now with stored neighbours to find (later and late changes of the same users).
        assert_indexed(await plans_of_one_append(connection, deliveries(5, 2, start=10)))
        assert_indexed(await plans_of_one_append(connection, deliveries(5, 1, start=5, late=True)))

        # Statistics of large tables: ANALYZE invalidates the plans; they are made again.
        await EventStore().insert_events(connection, deliveries(200, 10, start=100))
        await connection.execute("ANALYZE")
        assert_indexed(await plans_of_one_append(connection, deliveries(5, 2, start=1000)))
        assert_indexed(await plans_of_one_append(connection, deliveries(5, 1, start=50, late=True)))
    finally:
        await connection.close()


async def test_the_append_functions_plan_generically(db: asyncpg.Connection[Any]) -> None:
    settings = await db.fetch(
        "SELECT proname, proconfig FROM pg_proc WHERE proname IN ('append_events', 'project_events')"
    )
    assert {r["proname"]: sorted(r["proconfig"]) for r in settings} == {
        name: ["enable_incremental_sort=off", "jit=off", "plan_cache_mode=force_generic_plan"]
        for name in ("append_events", "project_events")
    }


FILLER_EVENTS = 20_000


def index_scans(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    """The plan's scans of `index`, at any depth."""
    own = [plan] if plan.get("Index Name") == index else []
    return own + [scan for child in plan.get("Plans", []) for scan in index_scans(child, index)]


async def test_lookups_that_find_nothing_stop_at_their_key(db: asyncpg.Connection[Any]) -> None:
    """A new delivery of a new user: its lookups read a few index pages, however long the log.

    Before 0006, the lookups' upper bounds were row comparisons, and PostgreSQL up to 17 reads on
    through every later entry of the SDKAppID when nothing matches (18 stops at the key).
    """
    # A long log of other users' deliveries: their digests are spread over the index, and every
    # 'filler…' user sorts before the new users, the side the version lookup reads towards.
    await db.execute(
        "INSERT INTO events (position, sdkappid, command, user_id, user_version, event_time,"
        "                    received_at, metadata, body, body_digest, digest, hash)"
        " SELECT n, $1, 'Profile.CallbackPortraitSet', 'filler' || n, 1, n, now(), '{}', '{}',"
        "        sha256(n::text::bytea), sha256(n::text::bytea), sha256(n::text::bytea)"
        "   FROM generate_series(1, $2::bigint) AS n",
        SDKAPPID,
        FILLER_EVENTS,
    )
    await db.execute("UPDATE log_head SET position = $1, hash = sha256('head')", FILLER_EVENTS)
    await db.execute("ANALYZE events")
    await load_auto_explain(
        db,
        "SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on;"
        " SET auto_explain.log_format = json;",
    )
    new = deliveries(8, 1)
    logged = await plans_of_one_append(db, new)
    plans = [
        json.loads(text[text.index("{") :])["Plan"]
        for text in logged.split("\n" + "duration: ")
        if '"Plan"' in text
    ]
    for index in ("events_delivery_once", "events_user_version"):
        scans = [scan for plan in plans for scan in index_scans(plan, index)]
        assert scans, (index, logged)
        loops = sum(scan["Actual Loops"] for scan in scans)
        pages = sum(scan["Shared Hit Blocks"] + scan["Shared Read Blocks"] for scan in scans)
        assert loops == len(new), (index, loops)
        # Root and leaf, now and then a neighbouring leaf; reading on would be ~70 pages a lookup.
        assert pages <= 4 * loops, (index, pages, loops)
