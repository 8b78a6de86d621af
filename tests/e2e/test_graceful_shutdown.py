"""SIGTERM under load: in-flight deliveries are committed or refused, never OK without commit."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import LiveServer, portrait_body, portrait_query

pytestmark = pytest.mark.e2e


async def test_sigterm_mid_load_loses_no_acknowledged_delivery(
    live_server: LiveServer, database_url: str
) -> None:
    acked: list[int] = []
    refused = 0
    enough = asyncio.Event()

    async def writer(http: httpx.AsyncClient, w: int) -> None:
        nonlocal refused
        for i in range(w, 100_000, 8):
            try:
                reply = await http.post(
                    "/callback",
                    params=portrait_query(),
                    json=portrait_body(f"shutdown-{i % 50}", 1_700_000_000_000 + i),
                )
            except httpx.TransportError:
                return  # the server has closed: this delivery may or may not be stored
            if reply.status_code == 200:
                acked.append(1_700_000_000_000 + i)
                if len(acked) >= 300:
                    enough.set()
            else:
                refused += 1

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        writers = [asyncio.create_task(writer(http, w)) for w in range(8)]
        await asyncio.wait_for(enough.wait(), 60)
        live_server.process.send_signal(signal.SIGTERM)  # while the writers keep posting
        await asyncio.wait_for(asyncio.gather(*writers), 60)
    assert live_server.process.wait(60) is not None

    connection: asyncpg.Connection[Any] = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        stored = [
            row["event_time"]
            for row in await connection.fetch("SELECT event_time FROM events ORDER BY position")
        ]
        assert len(stored) == len(set(stored)), "no delivery stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} deliveries answered 200 but not stored"
        assert (await verify_log(connection)).intact
    finally:
        await connection.close()
    assert len(acked) >= 300
