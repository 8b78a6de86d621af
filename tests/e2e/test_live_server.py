"""Behaviour that needs a real HTTP server: streamed bodies and concurrent requests during an outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import (
    OK_REPLY,
    LiveServer,
    count_rows,
    is_fail_reply,
    portrait_body,
    portrait_query,
    running_server,
    serve_env,
)

pytestmark = pytest.mark.e2e

LIMIT = 2048


@pytest.fixture
def small_server(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    env = serve_env(database_url, PROFILE_AUDIT_MAX_BODY_BYTES=str(LIMIT))
    with running_server(env, tmp_path) as server:
        yield server


async def test_body_limit_with_and_without_content_length(
    small_server: LiveServer, database_url: str
) -> None:
    async with httpx.AsyncClient(base_url=small_server.url, timeout=30) as http:
        big = json.dumps(portrait_body("big", Tag_Profile_IM_Nick="n" * LIMIT)).encode()
        reply = await http.post("/callback", params=portrait_query(), content=big)
        assert reply.status_code == 413, reply.text
        assert is_fail_reply(reply.json())

        async def chunks() -> AsyncIterator[bytes]:  # chunked transfer: no Content-Length
            yield big[:1000]
            yield big[1000:]

        reply = await http.post("/callback", params=portrait_query(), content=chunks())
        assert reply.status_code == 413, reply.text
        assert is_fail_reply(reply.json())

        small = json.dumps(portrait_body("small")).encode()

        async def small_chunks() -> AsyncIterator[bytes]:
            yield small[:10]
            yield small[10:]

        reply = await http.post("/callback", params=portrait_query(), content=small_chunks())
        assert reply.json() == OK_REPLY, reply.text

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await count_rows(connection, "events") == 1
        assert await count_rows(connection, "rejected_deliveries") == 0
    finally:
        await connection.close()


async def test_concurrent_deliveries_while_nothing_can_commit(
    live_server: LiveServer, database_url: str
) -> None:
    """The log head is locked by another transaction: every in-flight delivery gets 503, never OK;
    once the lock is gone the retries are stored, each exactly once."""
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    bodies = [portrait_body(f"outage{i}") for i in range(24)]
    try:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:

            async def post(body: dict[str, object]) -> httpx.Response:
                return await http.post("/callback", params=portrait_query(), json=body)

            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT * FROM log_head FOR UPDATE")
            replies = await asyncio.gather(*(post(body) for body in bodies))
            assert [r.status_code for r in replies] == [503] * len(bodies)
            assert all(is_fail_reply(r.json()) for r in replies)
            await transaction.rollback()

            async def post_until_ok(body: dict[str, object]) -> None:
                for _ in range(10):  # as the IM backend's retry would; 503 allowed, OK must come
                    reply = await post(body)
                    if reply.status_code == 200:
                        assert reply.json() == OK_REPLY
                        return
                    assert reply.status_code == 503, reply.text
                pytest.fail("a delivery was never accepted after the lock was released")

            await asyncio.gather(*(post_until_ok(body) for body in bodies))
        stored = await blocker.fetch("SELECT body FROM events ORDER BY position")
        assert sorted(r["body"] for r in stored) == sorted(
            json.dumps(b, sort_keys=True, separators=(",", ":")) for b in bodies
        )
    finally:
        await blocker.close()


async def test_sigterm_while_the_database_stalls_still_exits(
    live_server: LiveServer, database_url: str
) -> None:
    """A commit that can never finish must not keep `serve` from stopping (it used to hang)."""
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT * FROM log_head FOR UPDATE")
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
            reply = await http.post("/callback", params=portrait_query(), json=portrait_body("stuck"))
        assert reply.status_code == 503, reply.text
        # Still holding the lock: the process must exit anyway (stop() fails the test if it hangs).
        code = await asyncio.to_thread(live_server.stop)
        assert code in (0, 128 + 15), live_server.log()
        await transaction.rollback()
        assert await count_rows(blocker, "events") in (0, 1)  # never acknowledged either way
        assert (await verify_log(blocker)).intact
    finally:
        await blocker.close()
