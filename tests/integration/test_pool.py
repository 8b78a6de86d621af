"""The read pool: no round trip on release, no session state carried over, heals, warms ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery

from app import database
from app.config import asyncpg_dsn
from app.database import create_pool, pooled_connection, warm_pool
from app.queries import PROFILE, read_profile, warm_reads
from tests.conftest import SDKAPPID


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    made = await create_pool(database_url, max_size=1)
    try:
        yield made
    finally:
        await made.close()


async def test_returning_a_connection_sends_nothing(pool: asyncpg.Pool[Any]) -> None:
    """asyncpg's default reset would send `RESET ALL; UNLISTEN *; …` on every release."""
    sent: list[str] = []

    def log(record: LoggedQuery) -> None:
        sent.append(record.query)

    async with pooled_connection(pool) as connection:
        connection.add_query_logger(log)
        assert await connection.fetchval("SELECT 1") == 1
    async with pooled_connection(pool) as connection:
        connection.remove_query_logger(log)
    assert sent == ["SELECT 1"]


async def test_a_transaction_left_open_is_rolled_back_on_release(pool: asyncpg.Pool[Any]) -> None:
    async with pooled_connection(pool) as connection:
        first = await connection.fetchval("SELECT pg_backend_pid()")
        await connection.execute("BEGIN; SET LOCAL statement_timeout = 1234")
        assert connection.is_in_transaction()
    async with pooled_connection(pool) as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") == first  # the same connection
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SHOW statement_timeout") != "1234ms"


async def test_a_borrow_gives_up_when_no_connection_frees_up(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a connection idle the borrow skips asyncpg's timeout; with none, it keeps it."""
    monkeypatch.setattr(database, "ACQUIRE_TIMEOUT", 0.2)
    async with pooled_connection(pool) as held:
        assert pool.get_idle_size() == 0
        async with asyncio.timeout(10):  # fail, not hang, if the borrow waited without a limit
            with pytest.raises(TimeoutError):
                async with pooled_connection(pool):
                    pass
        assert await held.fetchval("SELECT 1") == 1
    async with pooled_connection(pool) as connection:  # and the pool still lends it
        assert await connection.fetchval("SELECT 2") == 2


async def test_a_connection_the_server_closed_is_replaced(pool: asyncpg.Pool[Any], database_url: str) -> None:
    async with pooled_connection(pool) as connection:
        first = await connection.fetchval("SELECT pg_backend_pid()")
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    failures = 0
    for _ in range(2):
        try:
            async with pooled_connection(pool) as connection:
                pid = await connection.fetchval("SELECT pg_backend_pid()")
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresError, OSError):
            # The pool may learn of the close from this borrow's failure; when the server's notice
            # arrives during the borrow, asyncpg says another operation is in progress.
            failures += 1
            continue
        break
    assert failures <= 1
    assert pid != first


async def test_warming_opens_and_prepares_connections_ahead(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=4)
    try:
        assert pool.get_size() == 0  # nothing opened until asked
        assert await warm_pool(pool, 3, warm_reads)
        assert (pool.get_size(), pool.get_idle_size()) == (3, 3)
        sent: list[str] = []

        def log(record: LoggedQuery) -> None:
            sent.append(record.query)

        async with pooled_connection(pool) as connection:
            assert await connection.fetchval("SHOW jit") == "off"
            connection.add_query_logger(log)
            await read_profile(connection, SDKAPPID, "nobody", None)
            connection.remove_query_logger(log)
        assert sent == [PROFILE]
        assert pool.get_size() == 3
    finally:
        await pool.close()


async def test_warming_without_a_database_gives_up_quietly(tmp_path: Path) -> None:
    pool = await create_pool(f"postgresql://postgres@/nothing?host={tmp_path}")  # no server there
    try:
        assert not await warm_pool(pool, 2, warm_reads)
        assert pool.get_size() == 0 or pool.get_idle_size() == pool.get_size()
    finally:
        await pool.close()
