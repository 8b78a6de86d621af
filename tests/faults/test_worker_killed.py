"""kill -9 of `serve` workers in the middle of 1,200 deliveries: no acknowledged delivery is lost.

Eight clients deliver 150 distinct events each and retry on connection errors and 5xx, as Tencent's
retry would. Both original workers of `serve --workers 2` are killed with SIGKILL, one after the
other, while deliveries are in flight. Then: every delivery that got a 200 is in the log exactly
once (those whose 200 was lost with the worker were redelivered and found as duplicates), the log
verifies, `serve` replaced each killed worker, and the replacements serve.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import httpx
import psutil
import pytest

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import OK_REPLY, LiveServer, portrait_query
from tests.faults.load import Load, assert_stored_exactly_once, worker_processes

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


async def wait_for_workers(serve: psutil.Process, count: int, without: set[int]) -> set[int]:
    """Poll until `serve` has `count` live workers, none of them in `without` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        pids = {p.pid for p in worker_processes(serve)}
        if len(pids) == count and not pids & without:
            return pids
        assert time.monotonic() < deadline, f"workers {pids} after 30 s (killed: {without})"
        await asyncio.sleep(0.1)


async def test_kill_9_of_workers_mid_load_loses_no_acknowledged_delivery(
    live_server: LiveServer, database_url: str
) -> None:
    serve = psutil.Process(live_server.process.pid)
    originals = await wait_for_workers(serve, 2, set())
    load = Load(live_server.url, clients=8, per_client=150)
    kills: list[tuple[int, float, int]] = []  # (pid, when, deliveries in flight then)

    async def killer() -> set[int]:
        # The second kill does not wait for the first replacement: waiting let the remaining load
        # finish first on a fast machine, and then nothing was ever in flight for it.
        for victim, after_acks in zip(sorted(originals), (load.total // 4, load.total // 3), strict=True):
            await load.wait_for_acks(after_acks)
            # Clients may all be pausing before a retry after the last kill: wait for one in flight.
            await load.wait_for(lambda: load.in_flight > 0, "a delivery in flight")
            # No await between the check and the kill: deliveries are in flight when it lands.
            kills.append((victim, time.monotonic(), load.in_flight))
            os.kill(victim, signal.SIGKILL)
        return await wait_for_workers(serve, 2, {pid for pid, _, _ in kills})

    _, replacements = await asyncio.gather(load.run(), killer())

    assert serve.is_running(), "the supervisor itself must survive"
    assert len(kills) == 2 and all(in_flight > 0 for _, _, in_flight in kills), (
        f"each kill must land while deliveries are in flight: {kills}"
    )
    assert not replacements & originals and len(replacements) == 2
    # Answers after the second kill can only come from replacement workers: the supervisor
    # restarted the killed ones and they serve.
    second_kill = kills[1][1]
    before = {a.process for a in load.attempts if a.received < kills[0][1] and a.process}
    after = {a.process for a in load.attempts if a.sent > second_kill and a.status == 200}
    assert after, "no delivery was acknowledged after the second kill"
    assert not after & before, f"a killed worker answered after its death: {after & before}"
    lost_connections = [a for a in load.attempts if a.status is None]
    failed_commits = [a for a in load.attempts if a.status is not None and a.status >= 500]

    # Fresh connections are served too, and a redelivery is still found as a duplicate.
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        for body in list(load.acked.values())[:: load.total // 10]:
            again = await http.post("/callback", params=portrait_query(), json=body)
            assert again.json() == OK_REPLY, again.text

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await assert_stored_exactly_once(connection, load)
        result = await verify_log(connection)
        assert result.intact, result
        assert result.events_checked == load.total
    finally:
        await connection.close()
    print(
        f"\n{load.total} deliveries in {len(load.attempts)} attempts: {len(lost_connections)} lost"
        f" connections, {len(failed_commits)} 5xx; in flight at the kills: {[k[2] for k in kills]}"
    )
