"""Migrations go down as well as up: a downgrade restores the earlier revision's functions and data."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
from alembic import command

from app.config import asyncpg_dsn
from app.database import alembic_config, upgrade
from app.eventstore import EventStore
from app.ingest import NewEvent, decode_callback
from app.queries import read_history
from tests.conftest import SDKAPPID, portrait_body, portrait_query, wait_for_a_lock_wait

FUNCTIONS = ("append_events", "project_events")


async def definitions(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            name: await connection.fetchval("SELECT pg_get_functiondef($1::regproc)", name)
            for name in FUNCTIONS
        }
    finally:
        await connection.close()


async def test_down_to_0002_and_up_again_gives_the_functions_of_each_revision(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    # Alembic runs its own event loop: off this one, in a thread.
    await asyncio.to_thread(upgrade, empty_database_url, "0002")
    at_0002 = await definitions(empty_database_url)
    await asyncio.to_thread(upgrade, empty_database_url)
    at_head = await definitions(empty_database_url)
    assert at_head != at_0002
    await asyncio.to_thread(command.downgrade, config, "0002")
    assert await definitions(empty_database_url) == at_0002
    await asyncio.to_thread(command.downgrade, config, "base")
    await asyncio.to_thread(upgrade, empty_database_url)
    assert await definitions(empty_database_url) == at_head


def deliveries() -> list[NewEvent]:
    """Changes of two tags by two users, some arriving late between earlier ones."""
    times = [10, 30, 20, 50, 40, 5]
    return [
        decode_callback(
            portrait_query(),
            json.dumps(
                portrait_body(
                    user, 1_700_000_000_000 + t, Tag_Profile_IM_Nick=f"{user}{t}", Tag_Profile_IM_Level=t
                )
            ).encode(),
            sdkappid=SDKAPPID,
            received_at=datetime.now(UTC),
        )
        for t in times
        for user in ("ann", "bo")
    ]


async def stored_olds(connection: asyncpg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = await connection.fetch("SELECT position, tag, old::text FROM profile_changes ORDER BY 1, 2")
    return [tuple(r) for r in rows]


async def read_olds(connection: asyncpg.Connection[Any], user: str) -> list[tuple[Any, ...]]:
    """(position, tag, old) of every change of the user, as the read API pages through them."""
    read: list[tuple[Any, ...]] = []
    before: tuple[int, int] | None = None
    while True:
        page = await read_history(
            connection,
            SDKAPPID,
            user,
            tag=None,
            operator=None,
            since=None,
            until=None,
            before=before,
            limit=2,
        )
        if not page.changes:
            return read
        read += [(c.position, c.tag, None if c.old is None else bytes(c.old).decode()) for c in page.changes]
        before = (page.changes[-1].event_time, page.changes[-1].position)


async def test_0005_reads_old_from_the_predecessor_and_its_downgrade_stores_it_again(
    empty_database_url: str,
) -> None:
    await asyncio.to_thread(upgrade, empty_database_url, "0004")
    connection = await asyncpg.connect(asyncpg_dsn(empty_database_url))
    try:
        await EventStore().insert_events(connection, deliveries()[:6])
        await EventStore().insert_events(connection, deliveries()[6:])
        at_0004 = await stored_olds(connection)
        assert sum(old is not None for *_, old in at_0004) == 20  # all but each tag's first

        await asyncio.to_thread(upgrade, empty_database_url)
        read = [change for user in ("ann", "bo") for change in await read_olds(connection, user)]
        # jsonb text renders as stored; the read API gives the same values.
        assert sorted(read) == at_0004

        await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0004")
        assert await stored_olds(connection) == at_0004
    finally:
        await connection.close()


PROJECTION_INDEXES = """
SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS definition, x.indisvalid AS valid
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid IN ('profiles'::regclass, 'profile_changes'::regclass)
 ORDER BY 1
"""


async def test_0007_rekeys_the_projections_while_appends_go_on(empty_database_url: str) -> None:
    """0007's index builds wait for open writers without locking new appends out meanwhile."""
    await asyncio.to_thread(upgrade, empty_database_url, "0006")
    dsn = asyncpg_dsn(empty_database_url)
    writer, appender = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    migration = None
    try:
        await EventStore().insert_events(appender, deliveries()[:4])
        # An append in flight: its transaction has written to profile_changes and not committed.
        in_flight = writer.transaction()
        await in_flight.start()
        await writer.execute(
            "INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at, new)"
            " VALUES ($1, 'cy', 1000, 'Tag_Profile_IM_Nick', 1, now(), '\"c\"')",
            SDKAPPID,
        )
        migration = asyncio.ensure_future(asyncio.to_thread(upgrade, empty_database_url, "0007"))
        await wait_for_a_lock_wait(appender)
        # While the migration waits for that transaction, another append projects into both
        # tables: an index built inside the migration's transaction would lock it out.
        await appender.execute("SET lock_timeout = '5s'")
        await EventStore().insert_events(appender, deliveries()[4:])
        await in_flight.commit()
        await migration
        indexes = await appender.fetch(PROJECTION_INDEXES)
        assert {r["name"]: r["definition"].partition(" USING btree ")[2] for r in indexes} == {
            "profiles_pkey": "(user_id, sdkappid, tag)",
            "profile_changes_pkey": '(user_id, sdkappid, tag, event_time, "position")',
            "profile_changes_by_user_time": '(user_id, sdkappid, event_time DESC, "position" DESC)',
        }
        assert all(r["valid"] for r in indexes)
        assert await appender.fetchval("SELECT count(*) FROM profile_changes") == 2 * len(deliveries()) + 1
        # And back: the same build, the other way round.
        await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0006")
        indexes = await appender.fetch(PROJECTION_INDEXES)
        assert [r["definition"].partition(" USING btree (")[2][:17] for r in indexes] == [
            "sdkappid, user_id"
        ] * 3
    finally:
        await writer.close()  # ends a transaction a failure left open, so the migration can finish
        if migration is not None:
            await asyncio.gather(migration, return_exceptions=True)
        await appender.close()
