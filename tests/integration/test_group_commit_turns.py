"""Writers take turns once they contend: a writer then gathers its batch when its turn comes, not\nwhile it waits for it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.config import asyncpg_dsn
from app.groupcommit import CONTENDED, TURN_LOCK, GroupCommitter
from app.ingest import NewEvent, decode_callback
from tests.conftest import SDKAPPID, portrait_body, portrait_query, wait_for_a_lock_wait


def delivery(user: str) -> NewEvent:
    return decode_callback(
        portrait_query(),
        json.dumps(portrait_body(user)).encode(),
        sdkappid=SDKAPPID,
        received_at=datetime.now(UTC),
    )


async def test_a_lone_writer_does_not_take_turns(database_url: str) -> None:
    dsn = asyncpg_dsn(database_url)
    other: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    committer = GroupCommitter(dsn)
    await committer.start()
    try:
        # Held elsewhere, the turn would stop a writer that took it: this one has never waited for
        # another writer, so it appends without asking for the turn (two round trips saved).
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", TURN_LOCK)
        appended = await asyncio.wait_for(committer.append(delivery("alone")), 10)
        assert appended.position == 1
    finally:
        await committer.stop()
        await other.close()


async def test_deliveries_that_come_while_another_writer_has_its_turn_share_one_batch(
    database_url: str,
) -> None:
    dsn = asyncpg_dsn(database_url)
    other: asyncpg.Connection[Any] = await asyncpg.connect(dsn)  # another process's writer
    batches: list[tuple[int, float]] = []
    committer = GroupCommitter(dsn, on_batch=lambda size, _seconds, waited: batches.append((size, waited)))
    await committer.start()
    try:
        # Another writer's append holds the append lock: this writer's batch waits for it in the
        # database (10 ms at least), and from then on this writer takes turns.
        transaction = other.transaction()
        await transaction.start()
        await other.execute("LOCK TABLE log_head IN EXCLUSIVE MODE")
        contended = asyncio.ensure_future(committer.append(delivery("turn-0")))
        await wait_for_a_lock_wait(other)
        await other.execute("SELECT pg_sleep(0.01)")
        await transaction.rollback()
        assert (await asyncio.wait_for(contended, 30)).position == 1
        assert len(batches) == 1 and batches[0][1] >= CONTENDED

        await other.execute("SELECT pg_advisory_lock(hashtext($1))", TURN_LOCK)
        first = asyncio.ensure_future(committer.append(delivery("turn-1")))
        await wait_for_a_lock_wait(other)  # the writer has the delivery and waits for its turn
        rest = [asyncio.ensure_future(committer.append(delivery(f"turn-{i}"))) for i in range(2, 11)]
        for _ in range(1000):  # until every append has queued its delivery (a condition, not a delay)
            if committer.pending == len(rest):
                break
            await asyncio.sleep(0)
        assert committer.pending == len(rest) and len(batches) == 1

        await other.execute("SELECT pg_advisory_unlock(hashtext($1))", TURN_LOCK)
        appended = await asyncio.wait_for(asyncio.gather(first, *rest), 30)
        assert [size for size, _ in batches] == [1, 10]
        assert batches[1][1] > 0  # the turn's wait counts as waiting for the append lock
        assert sorted(a.position for a in appended) == list(range(2, 12))
        # The writer gives the turn back after its batch (its answers go out first): another writer
        # gets it. Bounded only so that a regression fails instead of hanging the suite.
        await asyncio.wait_for(other.execute("SELECT pg_advisory_lock(hashtext($1))", TURN_LOCK), 10)
    finally:
        await committer.stop()
        await other.close()
