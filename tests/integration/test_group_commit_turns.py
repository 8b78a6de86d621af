"""Writers take turns: a writer gathers its batch when its turn comes, not while it waits for it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.config import asyncpg_dsn
from app.groupcommit import TURN_LOCK, GroupCommitter
from app.ingest import NewEvent, decode_callback
from tests.conftest import SDKAPPID, portrait_body, portrait_query, wait_for_a_lock_wait


def delivery(user: str) -> NewEvent:
    return decode_callback(
        portrait_query(),
        json.dumps(portrait_body(user)).encode(),
        sdkappid=SDKAPPID,
        received_at=datetime.now(UTC),
    )


async def test_deliveries_that_come_while_another_writer_has_its_turn_share_one_batch(
    database_url: str,
) -> None:
    dsn = asyncpg_dsn(database_url)
    other: asyncpg.Connection[Any] = await asyncpg.connect(dsn)  # another process's writer
    batches: list[tuple[int, float]] = []
    committer = GroupCommitter(dsn, on_batch=lambda size, _seconds, waited: batches.append((size, waited)))
    await committer.start()
    try:
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", TURN_LOCK)
        first = asyncio.ensure_future(committer.append(delivery("turn-0")))
        await wait_for_a_lock_wait(other)  # the writer has the first delivery and waits for its turn
        rest = [asyncio.ensure_future(committer.append(delivery(f"turn-{i}"))) for i in range(1, 10)]
        for _ in range(1000):  # until every append has queued its delivery (a condition, not a delay)
            if committer.pending == len(rest):
                break
            await asyncio.sleep(0)
        assert committer.pending == len(rest) and not batches

        await other.execute("SELECT pg_advisory_unlock(hashtext($1))", TURN_LOCK)
        appended = await asyncio.wait_for(asyncio.gather(first, *rest), 30)
        assert [size for size, _ in batches] == [10]
        assert batches[0][1] > 0  # the turn's wait counts as waiting for the append lock
        assert sorted(a.position for a in appended) == list(range(1, 11))
        # The turn ended with the batch: another writer takes it at once.
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", TURN_LOCK)
    finally:
        await committer.stop()
        await other.close()
