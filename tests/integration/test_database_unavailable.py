"""Without a database that commits, POST /callback answers 503 with the FAIL body, never OK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.config import asyncpg_dsn
from tests.conftest import (
    AUTH,
    OK_REPLY,
    count_rows,
    is_fail_reply,
    make_settings,
    portrait_body,
    portrait_query,
)


async def post(client: AsyncTestClient[Any], body: Any, query: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post("/callback", params=query or portrait_query(), content=raw)


async def post_until_ok(client: AsyncTestClient[Any], body: Any) -> None:
    """Deliver as the IM backend's retry would: 503 is allowed while the writer recovers, OK must come."""
    for _ in range(10):
        reply = await post(client, body)
        if reply.status_code == 200:
            assert reply.json() == OK_REPLY
            return
        assert reply.status_code == 503, reply.text
    raise AssertionError("the delivery was never accepted after the database came back")


async def test_no_server_listening(tmp_path: Path) -> None:
    """A Unix-socket directory with no server in it: connecting fails at once, every time."""
    url = f"postgresql://postgres@/profile_audit?host={tmp_path}"
    async with AsyncTestClient(app=create_app(make_settings(url))) as client:
        for i in range(3):
            reply = await post(client, portrait_body(f"u{i}"))
            assert reply.status_code == 503, reply.text
            assert is_fail_reply(reply.json())
        invalid = await post(client, b"{not json")
        assert invalid.status_code == 503, "an invalid delivery that cannot be kept is not a 400"
        assert is_fail_reply(invalid.json())
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["problems"]
        assert (await client.get("/healthz")).status_code == 200


async def test_database_goes_away_and_comes_back(server_url: str, database_url: str) -> None:
    name = urlsplit(asyncpg_dsn(database_url)).path.lstrip("/")
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        async with AsyncTestClient(app=create_app(make_settings(database_url))) as client:
            first = await post(client, portrait_body("before"))
            assert first.json() == OK_REPLY  # the writer connection is open now

            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            terminated = await admin.fetch(
                "SELECT pg_terminate_backend(pid, 10000) AS gone FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            assert terminated and all(row["gone"] for row in terminated)

            lost = portrait_body("during")
            for _ in range(3):
                reply = await post(client, lost)
                assert reply.status_code == 503, reply.text
                assert is_fail_reply(reply.json())
            invalid = await post(client, b"[broken")
            assert invalid.status_code == 503

            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            check = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                assert await count_rows(check, "events") == 1, "nothing answered 503 was stored"
                assert await count_rows(check, "rejected_deliveries") == 0

                # The IM backend retries: now it is stored, once.
                await post_until_ok(client, lost)
                await post_until_ok(client, lost)
                assert await count_rows(check, "events") == 2
                rows = await check.fetch("SELECT position, user_id FROM events ORDER BY position")
                assert [(r["position"], r["user_id"]) for r in rows] == [(1, "before"), (2, "during")]
            finally:
                await check.close()
    finally:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await admin.close()


async def test_stalled_commit_is_503_and_the_retry_is_stored_once(database_url: str) -> None:
    """While another transaction holds the log head, nothing can commit: 503 at the deadline, not OK."""
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with AsyncTestClient(app=create_app(make_settings(database_url))) as client:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT * FROM log_head FOR UPDATE")
            stalled = portrait_body("stalled")
            reply = await post(client, stalled)
            assert reply.status_code == 503, reply.text
            assert is_fail_reply(reply.json())
            assert await count_rows(blocker, "events") == 0
            await transaction.rollback()

            # The stalled batch commits once the lock is gone; the retry is a duplicate: OK, once.
            await post_until_ok(client, stalled)
            assert await count_rows(blocker, "events") == 1
            page = (await client.get("/events", headers=AUTH)).json()
            assert [e["payload"] for e in page["events"]] == [stalled]
    finally:
        await blocker.close()
