"""Migrations go down as well as up: a downgrade restores the earlier revision's functions."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command

from app.config import asyncpg_dsn
from app.database import alembic_config, upgrade

FUNCTIONS = ("append_events", "project_events")


async def definitions(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            name: await connection.fetchval("SELECT pg_get_functiondef($1::regproc)", name)
            for name in FUNCTIONS
        }
    finally:
        await connection.close()


async def test_down_to_0002_and_up_again_gives_the_functions_of_each_revision(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    # Alembic runs its own event loop: off this one, in a thread.
    await asyncio.to_thread(upgrade, empty_database_url, "0002")
    at_0002 = await definitions(empty_database_url)
    await asyncio.to_thread(upgrade, empty_database_url)
    at_head = await definitions(empty_database_url)
    assert at_head != at_0002
    await asyncio.to_thread(command.downgrade, config, "0002")
    assert await definitions(empty_database_url) == at_0002
    await asyncio.to_thread(command.downgrade, config, "base")
    await asyncio.to_thread(upgrade, empty_database_url)
    assert await definitions(empty_database_url) == at_head
