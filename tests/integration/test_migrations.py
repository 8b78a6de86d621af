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
from tests.conftest import SDKAPPID, portrait_body, portrait_query

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
