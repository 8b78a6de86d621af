"""Engine creation and schema revision checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import sqlalchemy_url


def migrations_dir() -> Path:
    """The Alembic scripts: the repo's `migrations/`, or the copy packaged as `app/_migrations`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("migrations not found beside the app package")


def alembic_config(database_url: str) -> Config:
    """An Alembic config that works from any working directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def head_revision() -> str | None:
    """The newest migration's revision id."""
    script = ScriptDirectory(str(migrations_dir()))
    return script.get_current_head()


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for reads and occasional writes (the append path has its own connection)."""
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=3600,
        connect_args={"command_timeout": 30, "timeout": 5},
    )


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return str(revision) if revision is not None else None


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision` (call from synchronous code)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection[Any]]:
    """Borrow a pooled connection as the plain asyncpg connection (autocommit per statement).

    A connection found closed (the server restarted) is discarded from the pool, at checkout or
    when it fails, so the pool heals by itself.
    """
    for attempt in (1, 2):
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            if driver.is_closed() and attempt == 1:
                await conn.invalidate()
                continue
            try:
                yield driver
            except BaseException:
                if driver.is_closed():
                    await conn.invalidate()
                raise
            return
