"""The naive baseline: parse like the service, then one autocommit INSERT per request from a pool."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response

from bench.delivery import fail, make_app, ok, parse_delivery

DSN_VARIABLE = "BENCH_INSERT_DSN"
POOL_VARIABLE = "BENCH_INSERT_POOL"
SCHEMA_LOCK = 7_311_001

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS bench_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sdkappid    bigint      NOT NULL,
    command     text        NOT NULL,
    user_id     text,
    event_time  bigint,
    received_at timestamptz NOT NULL,
    metadata    jsonb       NOT NULL,
    body        text        NOT NULL,
    body_digest bytea       NOT NULL,
    digest      bytea       NOT NULL,
    UNIQUE (sdkappid, body_digest)
)
"""

INSERT_SQL = """
INSERT INTO bench_events (sdkappid, command, user_id, event_time, received_at, metadata, body,
                          body_digest, digest)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
ON CONFLICT (sdkappid, body_digest) DO NOTHING
"""


async def _no_reset(_connection: asyncpg.Connection[Any]) -> None:
    """Skip the pool's reset round trip on release: the baseline pays exactly one per request."""


def _pool(app: Litestar) -> asyncpg.Pool[Any]:
    pool: asyncpg.Pool[Any] = app.state["pool"]
    return pool


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Open the pool and create the table (once, under an advisory lock, across workers)."""
    size = int(os.environ.get(POOL_VARIABLE, "16"))
    pool = await asyncpg.create_pool(os.environ[DSN_VARIABLE], min_size=size, max_size=size, reset=_no_reset)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        await connection.execute(SCHEMA_SQL)
    app.state["pool"] = pool
    try:
        yield
    finally:
        await pool.close()


async def receive(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Parse like the service, then commit the event with one INSERT."""
    event = await parse_delivery(request)
    if isinstance(event, Response):
        return event
    try:
        await _pool(request.app).execute(
            INSERT_SQL,
            event.sdkappid,
            event.command,
            event.user_id,
            event.event_time,
            event.received_at,
            msgspec.json.encode(event.metadata).decode(),
            event.body,
            event.body_digest,
            event.digest,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        return fail(503, f"database unavailable: {exc.__class__.__name__}")
    return ok()


def create_app() -> Litestar:
    """Factory for uvicorn (`bench.insert_app:create_app --factory`)."""
    return make_app(receive, [lifespan])
