"""Write a synthetic, valid, hash-chained log straight into a migrated database with COPY."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.config import asyncpg_dsn
from app.verify import verify_log
from bench.logdata import COLUMNS, GENESIS, chain, chunks, make_plan, render

CHUNK = 10_000

# Secondary indexes of `events`, with the statements that drop and recreate them as the migrations
# defined them (unique constraints stay constraints); the primary key stays in place.
SECONDARY_INDEXES = """
SELECT i.relname AS name, c.conname AS constraint_name,
       pg_get_indexdef(x.indexrelid) AS index_def,
       pg_get_constraintdef(c.oid) AS constraint_def
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
 WHERE x.indrelid = 'events'::regclass AND NOT x.indisprimary
 ORDER BY i.relname
"""


@dataclass(frozen=True)
class LoadReport:
    """What was written and how long each step took."""

    events: int
    users: int
    out_of_order: int
    items: int
    user_tags: int
    head_hash: str
    plan_seconds: float
    copy_seconds: float
    vacuum_seconds: float
    processes: int
    rebuilt_indexes: tuple[str, ...]

    @property
    def rows_per_second(self) -> float:
        """Generated and COPYed rows per second (planning excluded)."""
        return self.events / self.copy_seconds if self.copy_seconds else 0.0

    @property
    def timings(self) -> str:
        """How long generating, copying and VACUUM ANALYZE took, in one phrase."""
        return (
            f"generated in {self.plan_seconds + self.copy_seconds:.1f} s ({self.rows_per_second:,.0f} rows/s"
            f" COPY), VACUUM ANALYZE {self.vacuum_seconds:.1f} s"
        )


@dataclass
class _Totals:
    items: int = 0
    head: bytes = GENESIS


async def _copy(
    connection: asyncpg.Connection[Any], pool: Any, work: list[Any], totals: _Totals, user_tags: set[int]
) -> None:
    results = pool.imap(render, work)

    async def source() -> AsyncIterator[bytes]:
        while True:
            rendered = await asyncio.to_thread(next, results, None)
            if rendered is None:
                return
            data, totals.head = chain(rendered, totals.head)
            totals.items += rendered.items
            user_tags.update(rendered.user_tags)
            yield data

    await connection.copy_to_table("events", source=source(), columns=list(COLUMNS), format="text")


async def _drop_indexes(connection: asyncpg.Connection[Any]) -> list[tuple[str, str]]:
    """Drop the secondary indexes; returns (name, statement that recreates it)."""
    recreate: list[tuple[str, str]] = []
    for row in await connection.fetch(SECONDARY_INDEXES):
        if row["constraint_name"] is not None:
            name = row["constraint_name"]
            await connection.execute(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
            recreate.append((name, f'ALTER TABLE events ADD CONSTRAINT "{name}" {row["constraint_def"]}'))
        else:
            await connection.execute(f'DROP INDEX "{row["name"]}"')
            recreate.append((row["name"], row["index_def"]))
    return recreate


async def _load(
    url: str, events: int, users: int, seed: int, processes: int, keep_indexes: bool
) -> LoadReport:
    started = time.perf_counter()
    plan = make_plan(events, users, seed)
    work = chunks(plan, CHUNK, seed)
    planned = time.perf_counter()
    totals, user_tags = _Totals(), set[int]()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if await connection.fetchval("SELECT position FROM log_head") != 0:
            raise RuntimeError("the log is not empty: load only into a freshly migrated database")
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            async with connection.transaction():
                await connection.execute("SET LOCAL maintenance_work_mem = '512MB'")
                recreate = [] if keep_indexes else await _drop_indexes(connection)
                await _copy(connection, pool, work, totals, user_tags)
                for _name, statement in recreate:
                    await connection.execute(statement)
                await connection.execute(
                    "UPDATE log_head SET position = $1, hash = $2", len(plan), totals.head
                )
        copied = time.perf_counter()
        await connection.execute("VACUUM (ANALYZE) events")
        vacuumed = time.perf_counter()
    finally:
        await connection.close()
    return LoadReport(
        events=len(plan),
        users=max(plan.users) + 1,
        out_of_order=plan.out_of_order,
        items=totals.items,
        user_tags=len(user_tags),
        head_hash=totals.head.hex(),
        plan_seconds=planned - started,
        copy_seconds=copied - planned,
        vacuum_seconds=vacuumed - copied,
        processes=processes,
        rebuilt_indexes=tuple(name for name, _ in recreate),
    )


def load_log(
    url: str,
    events: int,
    users: int,
    *,
    seed: int = 1,
    processes: int | None = None,
    keep_indexes: bool = False,
) -> LoadReport:
    """Generate `events` events over `users` users and COPY them into the (empty, migrated) database.

    By default the secondary indexes are dropped for the COPY and recreated from their own
    definitions in the same transaction (a bulk load's usual trick); `keep_indexes` skips that.
    """
    workers = processes or max(1, len(os.sched_getaffinity(0)))
    return asyncio.run(_load(url, events, users, seed, workers, keep_indexes))


async def _verify(url: str) -> tuple[bool, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        result = await verify_log(connection)
    finally:
        await connection.close()
    if result.intact:
        return True, f"intact ({result.events_checked} events, last position {result.last_position})"
    return False, f"TAMPERED at position {result.bad_position}: {result.reason}"


def verify(url: str) -> tuple[bool, str]:
    """app.verify.verify_log over the database: (intact, one-line detail)."""
    return asyncio.run(_verify(url))


async def _counts(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("events", "profiles", "profile_changes")
        }
    finally:
        await connection.close()


def table_counts(url: str) -> dict[str, int]:
    """Rows in events, profiles and profile_changes."""
    return asyncio.run(_counts(url))


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.loadlog URL`: migrate an empty database and fill it with a generated log."""
    import argparse

    from app.database import upgrade

    parser = argparse.ArgumentParser(prog="python -m bench.loadlog", description=main.__doc__)
    parser.add_argument("url", help="postgresql://… of an empty or freshly migrated database")
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (1,000,000)")
    parser.add_argument("--users", type=int, default=100_000, help="users they belong to (100,000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args(argv)
    upgrade(args.url)
    report = load_log(args.url, args.events, args.users, seed=args.seed)
    print(
        f"{report.events:,} events over {report.users:,} users, {report.items:,} profile items,"
        f" {report.user_tags:,} user tags; {report.timings}"
    )


if __name__ == "__main__":  # spawned generator processes import this module; they must not run it
    main()
