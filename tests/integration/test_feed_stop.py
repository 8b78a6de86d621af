"""The live feed stops when asked, even when a notification wakes it at that very moment.

Found by a hang of the whole suite: an app's lifespan shutdown waited forever in `Feed.stop()`. On
Python 3.11, `asyncio.wait_for` returns the inner result when the outer task is cancelled in the
same loop iteration in which the inner future completes, so the cancellation was lost and the feed
loop went on polling; `stop()` awaited it for ever. A NOTIFY from the last append arriving just as
the app shut down was enough.
"""

from __future__ import annotations

import asyncio

from app.config import asyncpg_dsn
from app.eventstore import StoredEvent
from app.feed import Feed


async def no_events(_after: int, _limit: int) -> list[StoredEvent]:
    return []


async def test_stop_right_after_a_wake_up_still_stops(database_url: str) -> None:
    for _ in range(3):
        feed = Feed(asyncpg_dsn(database_url), no_events, poll_seconds=5)
        await feed.start(head=0)
        task = feed._task
        assert task is not None
        try:
            # Poll (30 s at most) until the feed waits for a notification: listening, nothing to do.
            for _ in range(3000):
                if feed._wake._waiters:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the feed never started waiting for notifications")
            feed._wake.set()  # what a NOTIFY does, in the same loop iteration as the cancellation
            stopping = asyncio.create_task(feed.stop())
            await asyncio.wait({stopping}, timeout=10)  # a lost cancellation: pending for ever
            assert stopping.done(), "Feed.stop() hangs: the feed loop lost its cancellation"
            assert task.done()
        finally:
            while not task.done():  # clean up after a failure: cancel until it really ends
                task.cancel()
                await asyncio.wait({task}, timeout=1)
