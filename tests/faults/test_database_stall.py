"""A database that stalls in the middle of a load: replies still come within Tencent's 2 s.

The test holds the append lock (`SELECT … FROM log_head FOR UPDATE` in an open transaction) and
blocks inserts into `rejected_deliveries` (`LOCK TABLE … IN EXCLUSIVE MODE`), so that neither an
event nor a rejected delivery can be written, while eight clients deliver good events and another
one delivers invalid ones, all retrying on 5xx. Tencent waits 2 s for a reply; so:

- every reply, good or invalid delivery, before, during and after the stall, comes within 2 s
  (this contract's only timed assertion); during the stall it is a 503, never a 200, and an
  invalid delivery that cannot be kept is a 503 too (to be redelivered), not a 400;
- when the stall ends, the service recovers by itself: the deliveries that got 503 are redelivered
  and stored exactly once (those committed late are found as duplicates), the invalid ones are kept,
  and the log verifies.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import LiveServer, is_fail_reply, portrait_body, portrait_query
from tests.faults.load import RETRY_PAUSE, Attempt, Load, assert_stored_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

TENCENT_TIMEOUT = 2.0  # seconds the IM backend waits for a reply (shared/spec, section 1)
INVALID = -1  # the client number of the invalid deliveries' sender


def invalid_body(index: int) -> bytes:
    """An authenticated delivery whose body is not a valid Profile.CallbackPortraitSet."""
    body = portrait_body(f"invalid-{index}", index)
    body["From_Account"] = ""
    return json.dumps(body).encode()


async def send_invalid(url: str, load: Load, stop: asyncio.Event, attempts: list[Attempt]) -> None:
    """Deliver invalid bodies one after another until `stop` (1,000 at most, ~20 a second);
    retry each on 5xx until its 400."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        for index in range(1000):
            if stop.is_set():
                return
            while True:
                sent = time.monotonic()
                try:
                    reply = await http.post("/callback", params=portrait_query(), content=invalid_body(index))
                except httpx.TransportError as exc:  # e.g. no reply within 5 s: recorded, then fails
                    attempts.append(Attempt(INVALID, index, sent, time.monotonic(), None, repr(exc), None))
                    await load.notify()
                    continue
                attempt = Attempt(INVALID, index, sent, time.monotonic(), reply.status_code, None, None)
                attempts.append(attempt)
                await load.notify()
                assert is_fail_reply(reply.json()), reply.text
                assert reply.status_code in (400, 503), reply.text
                await asyncio.sleep(RETRY_PAUSE)  # a trickle beside the load, not a flood
                if reply.status_code == 400:
                    break


async def test_replies_within_2s_while_the_database_stalls_and_recovery_after(
    live_server: LiveServer, database_url: str
) -> None:
    load = Load(live_server.url, clients=8, per_client=100)
    invalid: list[Attempt] = []
    stall: dict[str, float] = {}
    stop_invalid = asyncio.Event()
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))

    async def fault() -> None:
        await load.wait_for_acks(load.total // 4)
        await load.wait_for(lambda: any(a.status == 400 for a in invalid), "an invalid delivery kept")
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT position FROM log_head FOR UPDATE")
        await blocker.execute("LOCK TABLE rejected_deliveries IN EXCLUSIVE MODE")
        stall["from"] = time.monotonic()

        def refused_enough() -> bool:
            during = load.during(stall["from"], time.monotonic())
            bad = [a for a in invalid if a.sent >= stall["from"]]
            return len(bad) >= 2 and all(
                sum(1 for a in during if a.client == c) >= 2 for c in range(load.clients)
            )

        await load.wait_for(refused_enough, "every client refused twice during the stall")
        stall["until"] = time.monotonic()
        await transaction.rollback()

    async def deliveries() -> None:
        try:
            await load.run()
        finally:
            stop_invalid.set()

    try:
        await asyncio.gather(
            deliveries(), fault(), send_invalid(live_server.url, load, stop_invalid, invalid)
        )

        every = load.attempts + invalid
        slowest = max(every, key=lambda a: a.received - a.sent)
        assert slowest.received - slowest.sent < TENCENT_TIMEOUT, f"a reply took too long: {slowest}"
        assert all(a.status is not None for a in every), "no connection may be dropped"

        during = load.during(stall["from"], stall["until"])
        assert during and all(a.status == 503 for a in during), sorted({a.status for a in during})
        invalid_during = [a for a in invalid if stall["from"] <= a.sent and a.received <= stall["until"]]
        assert invalid_during and all(a.status == 503 for a in invalid_during)
        assert any(a.sent > stall["until"] and a.status == 200 for a in load.attempts)

        await assert_stored_exactly_once(blocker, load)
        result = await verify_log(blocker)
        assert result.intact and result.events_checked == load.total, result
        await assert_invalid_kept(blocker, invalid)
    finally:
        await blocker.close()
    print(
        f"\nslowest reply {slowest.received - slowest.sent:.2f} s; {len(during)} good and"
        f" {len(invalid_during)} invalid deliveries during the {stall['until'] - stall['from']:.1f} s stall"
    )


async def assert_invalid_kept(connection: asyncpg.Connection[Any], invalid: list[Attempt]) -> None:
    """Each invalid delivery answered 400 is kept, at most once per attempt (503s may be kept too)."""
    rows = await connection.fetch("SELECT body FROM rejected_deliveries")
    kept: dict[bytes, int] = {}
    for row in rows:
        kept[bytes(row["body"])] = kept.get(bytes(row["body"]), 0) + 1
    answered = {a.index for a in invalid if a.status == 400}
    for index in {a.index for a in invalid}:
        attempts = sum(1 for a in invalid if a.index == index)
        count = kept.get(invalid_body(index), 0)
        assert count <= attempts, f"invalid delivery {index} kept {count} times for {attempts} attempts"
        if index in answered:
            assert count >= 1, f"invalid delivery {index} was answered 400 but not kept"
    assert sum(kept.values()) == len(rows)
