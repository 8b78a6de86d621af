"""Stopping the group committer while a batch is stuck in the database fails that batch at once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.config import asyncpg_dsn
from app.groupcommit import GroupCommitter, StoreUnavailable
from app.ingest import decode_callback
from tests.conftest import SDKAPPID, portrait_body, portrait_query, wait_for_a_lock_wait


async def test_a_batch_cut_off_by_stop_fails_instead_of_waiting_forever(database_url: str) -> None:
    dsn = asyncpg_dsn(database_url)
    holder: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    committer = GroupCommitter(dsn, drain_timeout=0.1)
    await committer.start()
    try:
        # The append lock is held elsewhere: the writer's batch waits inside the database.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT position FROM log_head FOR UPDATE")
        event = decode_callback(
            portrait_query(),
            json.dumps(portrait_body("stuck")).encode(),
            sdkappid=SDKAPPID,
            received_at=datetime.now(UTC),
        )
        waiting = asyncio.ensure_future(committer.append(event))  # no deadline of its own
        # Until the writer's statement waits for that lock (a condition, not a guessed delay).
        await wait_for_a_lock_wait(holder)

        await committer.stop()
        # Bounded only so that a regression fails instead of hanging the suite.
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await asyncio.wait_for(waiting, 5)
        await transaction.rollback()
    finally:
        await committer.stop()
        await holder.close()
