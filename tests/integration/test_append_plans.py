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
        try:
            await connection.execute("LOAD 'auto_explain'")
        except asyncpg.PostgresError as exc:  # a server without it, or a user who may not load it
            pytest.skip(f"auto_explain is not available here: {exc}")
        await connection.execute(
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_min_duration = -1;"
            " SET client_min_messages = log"
        )
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
