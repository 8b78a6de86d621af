"""The connection pool, migrations and schema revision checks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.config import asyncpg_dsn

log = logging.getLogger(__name__)


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


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision id (read once: the scripts ship with the code).

    Reading them runs every migration module, ~1.6 ms that `/readyz` held the event loop for.
    """
    script = ScriptDirectory(str(migrations_dir()))
    return script.get_current_head()


# The read pool: up to this many connections per process, for the read API, `/readyz`, `/metrics`,
# the live feed's catch-up and rejected-delivery inserts.
POOL_SIZE = 20
# A request that finds every pooled connection busy this long answers 503 (TimeoutError).
ACQUIRE_TIMEOUT = 10.0
# Seconds a closing pool waits for borrowed connections before it closes them anyway.
CLOSE_TIMEOUT = 5.0


async def _keep_session(_connection: asyncpg.Connection[Any]) -> None:
    """Release without asyncpg's reset round trip: these connections keep no session state.

    asyncpg still rolls back a transaction left open and drops listeners before calling this.
    """


async def create_pool(database_url: str, *, max_size: int = POOL_SIZE) -> asyncpg.Pool[Any]:
    """The pool for reads and occasional writes (the append path has its own connection).

    It opens connections only when asked for one, so it starts while the database is down, and
    reopens a connection found closed (the server restarted) on its next acquire.
    """
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=max_size,
        reset=_keep_session,
        command_timeout=30,
        timeout=5,
        # The reads are index lookups: JIT only adds its compile time (asyncpg's type
        # introspection on a new connection took 53 ms with it, 7.5 ms without).
        server_settings={"jit": "off"},
        # Kept open once opened, as prepared and warm as they are (asyncpg closes idle ones
        # after 300 s by default, and the next burst would pay for new ones again).
        max_inactive_connection_lifetime=0,
    )


async def warm_pool(
    pool: asyncpg.Pool[Any], count: int, warm: Callable[[asyncpg.Connection[Any]], Awaitable[None]]
) -> bool:
    """Open `count` connections and run `warm` on each, so that no request pays for it.

    Returns False, having logged why, when the database cannot be reached: the pool then opens
    its connections when requests ask for them.
    """
    try:
        async with contextlib.AsyncExitStack() as stack:
            connections = [await stack.enter_async_context(pooled_connection(pool)) for _ in range(count)]
            await asyncio.gather(*(warm(connection) for connection in connections))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        log.warning("could not open the read pool's connections ahead: %s: %s", exc.__class__.__name__, exc)
        return False
    return True


@contextlib.asynccontextmanager
async def pooled_connection(pool: asyncpg.Pool[Any]) -> AsyncIterator[asyncpg.Connection[Any]]:
    """Borrow a connection from `pool` (autocommit per statement); TimeoutError when none frees up."""
    # With a connection idle, the acquire cannot wait for one to free up (reopening a closed one
    # is bounded by the pool's connect timeout). Only then is it made without asyncpg's timeout,
    # which arms and cancels a timer for the acquire and again for the release: 5 % of a
    # profile read's CPU time in the worker.
    timeout = None if pool.get_idle_size() else ACQUIRE_TIMEOUT
    async with pool.acquire(timeout=timeout) as connection:
        # A proxy that forwards every Connection method (and goes stale on release).
        yield cast("asyncpg.Connection[Any]", connection)


async def close_pool(pool: asyncpg.Pool[Any]) -> None:
    """Close the pool's connections once released; after CLOSE_TIMEOUT, close them at once."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await pool.close()
    except TimeoutError:
        pool.terminate()


async def select_revision(connection: asyncpg.Connection[Any]) -> str | None:
    """The revision the database is at (None for an empty database)."""
    if not await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
        return None
    revision = await connection.fetchval("SELECT version_num FROM alembic_version")
    return None if revision is None else str(revision)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision` (call from synchronous code)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
