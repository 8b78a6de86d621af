"""Zero-downtime rebuild of projections: shadow tables filled from the log, then swapped in.

1. Stage every profile item of the log up to the current head (set-based, in position chunks).
   When profile_changes is rebuilt, its shadow table is the stage: the items go there once.
2. Fill each other projection's shadow table from the stage with set-based SQL; index them all.
   Steps 1 and 2 are split into jobs (a chunk, a fill, an index) that run on as many
   connections as the caller gives, so PostgreSQL can use more than one core.
3. In one transaction: wait until no vacuum holds the live tables; catch up, applying the events
   appended since step 1 to the shadow tables as the inline projection applies a batch, in rounds
   while appends go on, until the events left are few; then, under the append lock, apply those,
   swap the shadow tables in and record the projections' versions. Readers see either the old or
   the new table, never an empty or half-built one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import asyncpg
import msgspec

from app.projections import REGISTRY, Projection, profile_changes

REBUILD_LOCK = "profile-audit:rebuild"
STAGE = "profile_items__stage"
TAIL_STAGE = "profile_items__tail"
CHUNK = 250_000
# Appends wait while the swap catches up; applying a few hundred events takes milliseconds. A round
# applies events many times faster than callbacks bring them, so the rounds end well before their cap.
LOCKED_TAIL = 200
CATCH_UP_ROUNDS = 10

# The replaced table is renamed and dropped after the swap: the commit of a DROP unlinks its
# files, a few hundred milliseconds for a big table, and appends would wait for that.
RETIRED = "__retired"

# The projection whose shadow table doubles as the stage: the stage has its columns.
STAGED_IN = profile_changes.NAME
# Autovacuum stays off the tables a rebuild writes: a worker vacuuming one holds a lock that a
# DROP or RENAME of it waits for, a whole deadlock_timeout (1 s) before PostgreSQL cancels the worker.
NO_AUTOVACUUM = "WITH (autovacuum_enabled = false)"
# {kind}: UNLOGGED for the snapshot's stage (shared by the jobs), TEMP for the catch-up's tail.
STAGE_DDL = "CREATE {kind} TABLE {stage} (LIKE profile_changes) " + NO_AUTOVACUUM

EXTRACT_SQL = """
INSERT INTO {stage} (sdkappid, user_id, position, tag, event_time, received_at,
                     operator_account, opt_platform, client_ip, new)
SELECT e.sdkappid, e.user_id, e.position, i.tag, e.event_time, e.received_at,
       d.doc ->> 'Operator_Account', e.metadata ->> 'OptPlatform', e.metadata ->> 'ClientIP',
       i.value
  FROM events e
 CROSS JOIN LATERAL (SELECT e.body::jsonb AS doc OFFSET 0) d  -- parsed once, not per item
 CROSS JOIN LATERAL profile_items(d.doc) i
 WHERE e.command = 'Profile.CallbackPortraitSet' AND e.position > $1 AND e.position <= $2
"""

Progress = Callable[[str, int, int], None]
# A unit of rebuild work on one connection; returns the jobs it makes possible.
Job: TypeAlias = Callable[["asyncpg.Connection[Any]"], Awaitable[list["Job"]]]

# Big sorts in memory; the shadow fills need not wait for WAL flushes (they are thrown away on a
# crash anyway): only the swap transaction commits synchronously. Memoize would hash every parsed
# body to cache profile_items() for repeats that never come.
SESSION_SETTINGS = (
    "SET work_mem = '1GB'; SET maintenance_work_mem = '1GB'; SET synchronous_commit = off;"
    " SET enable_memoize = off"
)


class RebuildBusy(Exception):
    """Another rebuild, or a projection check, holds the rebuild lock."""


class RebuildReport(msgspec.Struct, frozen=True):
    """What a rebuild did."""

    projections: list[str]
    events_replayed: int
    last_position: int
    seconds: float
    events_caught_up_under_lock: int
    append_lock_seconds: float

    @property
    def events_per_second(self) -> float:
        """Replay rate."""
        return self.events_replayed / self.seconds if self.seconds > 0 else 0.0


def select_projections(names: Sequence[str]) -> list[Projection]:
    """The named projections (all when none are named); ValueError names an unknown one."""
    if not names:
        return list(REGISTRY.values())
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown projection {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in dict.fromkeys(names)]


async def rebuild_projections(
    connection: asyncpg.Connection[Any],
    names: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    helpers: Sequence[asyncpg.Connection[Any]] = (),
) -> RebuildReport:
    """Rebuild the named projections (all by default) while appends and reads go on.

    `helpers` are extra connections that share the staging, fills and index builds.
    """
    projections = select_projections(names)
    started = time.perf_counter()
    report = progress or (lambda _phase, _done, _total: None)
    got_lock = await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", REBUILD_LOCK)
    if not got_lock:
        raise RebuildBusy("another rebuild or a projection check is running; wait for it to finish")
    try:
        workers = [connection, *helpers]
        for worker in workers:
            await worker.execute(SESSION_SETTINGS)
        snapshot = int(await connection.fetchval("SELECT position FROM log_head"))

        for projection in projections:
            await connection.execute(f"DROP TABLE IF EXISTS {projection.table}{RETIRED}")
            shadow = f"{projection.table}__shadow"
            await _recreate(
                connection,
                shadow,
                f"CREATE TABLE {shadow} (LIKE {projection.table} INCLUDING DEFAULTS) {NO_AUTOVACUUM}",
            )
        staged_in = next((p for p in projections if p.name == STAGED_IN), None)
        if staged_in is None:
            stage = STAGE
            await _recreate(connection, STAGE, STAGE_DDL.format(kind="UNLOGGED", stage=STAGE))
        else:
            stage = f"{staged_in.table}__shadow"
        staged = 0

        def extract(low: int, high: int) -> Job:
            async def run(worker: asyncpg.Connection[Any]) -> list[Job]:
                nonlocal staged
                await worker.execute(EXTRACT_SQL.format(stage=stage), low, high)
                staged += high - low
                report("replay", staged, snapshot)
                return []

            return run

        await _run_jobs(
            workers, [extract(low, min(low + CHUNK, snapshot)) for low in range(0, snapshot, CHUNK)]
        )
        report("replay", snapshot, snapshot)

        built = 0

        def finished_one() -> None:
            nonlocal built
            built += 1
            report("build", built, len(projections))

        def fill(projection: Projection, shadow: str) -> Job:
            async def run(worker: asyncpg.Connection[Any]) -> list[Job]:
                if shadow != stage:  # the staged-in projection's shadow is filled already
                    await worker.execute(projection.fill_sql.format(target=shadow, stage=stage))
                # A swapped-in table without statistics is read with bad plans until autovacuum.
                await worker.execute(f"ANALYZE {shadow}")
                definitions = [d for _name, d in await _shadow_indexes(worker, projection.table)]
                if not definitions:
                    finished_one()
                remaining = len(definitions)

                def index(definition: str) -> Job:
                    async def build(worker: asyncpg.Connection[Any]) -> list[Job]:
                        nonlocal remaining
                        await worker.execute(definition)
                        remaining -= 1
                        if remaining == 0:
                            finished_one()
                        return []

                    return build

                return [index(d) for d in definitions]

            return run

        await _run_jobs(workers, [fill(p, f"{p.table}__shadow") for p in projections])

        async with connection.transaction():
            await connection.execute("SET LOCAL synchronous_commit = on")
            # Wait out a vacuum of a live table before taking the append lock, not while holding
            # it: this lock lets appends and reads through and keeps autovacuum off until the swap.
            await connection.execute(
                f"LOCK TABLE {', '.join(p.table for p in projections)} IN SHARE UPDATE EXCLUSIVE MODE"
            )
            caught_up = snapshot
            for _ in range(CATCH_UP_ROUNDS):
                head = int(await connection.fetchval("SELECT position FROM log_head"))
                if head - caught_up <= LOCKED_TAIL:
                    break
                report("catch-up", caught_up - snapshot, head - snapshot)
                await _catch_up(connection, projections, caught_up, head)
                caught_up = head
                report("catch-up", caught_up - snapshot, head - snapshot)
            head = int(await connection.fetchval("SELECT position FROM log_head FOR UPDATE"))
            locked_at = time.perf_counter()
            if head > caught_up:
                await _catch_up(connection, projections, caught_up, head)
            for projection in projections:
                await _swap(connection, projection)
            await connection.executemany(
                "INSERT INTO projection_versions AS v (name, version, last_position, rebuilt_at)"
                " VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO UPDATE"
                " SET version = excluded.version, last_position = excluded.last_position,"
                " rebuilt_at = excluded.rebuilt_at",
                [(p.name, p.version, head) for p in projections],
            )
        unlocked_at = time.perf_counter()
        report("swap", 1, 1)
        for projection in projections:
            await connection.execute(f"DROP TABLE {projection.table}{RETIRED}")
        await connection.execute(f"DROP TABLE IF EXISTS {STAGE}")
        return RebuildReport(
            projections=[p.name for p in projections],
            events_replayed=head,
            last_position=head,
            seconds=time.perf_counter() - started,
            events_caught_up_under_lock=head - caught_up,
            append_lock_seconds=unlocked_at - locked_at,
        )
    finally:
        await connection.execute("SELECT pg_advisory_unlock(hashtext($1))", REBUILD_LOCK)


async def _run_jobs(workers: Sequence[asyncpg.Connection[Any]], jobs: list[Job]) -> None:
    """Run the jobs, and the jobs they return, on the workers, each on one connection at a time."""
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    outstanding = len(jobs)
    for job in jobs:
        queue.put_nowait(job)
    if not outstanding:
        return

    async def work(worker: asyncpg.Connection[Any]) -> None:
        nonlocal outstanding
        while (job := await queue.get()) is not None:
            for follow_up in await job(worker):
                outstanding += 1
                queue.put_nowait(follow_up)
            outstanding -= 1
            if outstanding == 0:
                for _ in workers:
                    queue.put_nowait(None)

    tasks = [asyncio.ensure_future(work(worker)) for worker in workers]
    try:
        await asyncio.gather(*tasks)
    finally:
        # One worker failed: stop the others before their connections are used again.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _recreate(connection: asyncpg.Connection[Any], table: str, ddl: str) -> None:
    await connection.execute(f"DROP TABLE IF EXISTS {table}")
    await connection.execute(ddl)


async def _shadow_indexes(connection: asyncpg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """The live table's indexes, redefined on its shadow table under `<name>__shadow`."""
    rows = await connection.fetch(
        "SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS definition"
        "  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = $1::regclass ORDER BY i.relname",
        table,
    )
    result = []
    for row in rows:
        name, definition = row["name"], row["definition"]
        head, _, tail = definition.partition(" ON ")
        head = head.replace(f"INDEX {name}", f"INDEX {name}__shadow", 1)
        tail = tail.replace(f"{table} ", f"{table}__shadow ", 1)
        result.append((name, f"{head} ON {tail}"))
    return result


async def _catch_up(
    connection: asyncpg.Connection[Any], projections: list[Projection], after: int, head: int
) -> None:
    """Apply the events at positions (`after`, `head`] to the shadow tables."""
    await _recreate(connection, TAIL_STAGE, STAGE_DDL.format(kind="TEMP", stage=TAIL_STAGE))
    await connection.execute(EXTRACT_SQL.format(stage=TAIL_STAGE), after, head)
    for projection in projections:
        shadow = f"{projection.table}__shadow"
        await connection.execute(projection.catch_up_sql.format(target=shadow, stage=TAIL_STAGE))
    await connection.execute(f"DROP TABLE {TAIL_STAGE}")


async def _swap(connection: asyncpg.Connection[Any], projection: Projection) -> None:
    """Replace the live table by its shadow, keeping index and constraint names."""
    table = projection.table
    shadow = f"{table}__shadow"
    constraints = {
        row["conname"]: row["contype"]
        for row in await connection.fetch(
            # contype is "char": cast it, or asyncpg returns bytes and no kind would match.
            "SELECT conname, contype::text AS contype FROM pg_constraint WHERE conrelid = $1::regclass",
            table,
        )
    }
    names = [name for name, _ in await _shadow_indexes(connection, table)]
    options = await connection.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table)
    await connection.execute(f"ALTER TABLE {table} RENAME TO {table}{RETIRED}")
    await connection.execute(f"ALTER TABLE {table}{RETIRED} SET (autovacuum_enabled = false)")
    for name in names:  # renames the constraint of a constraint's index too
        await connection.execute(f"ALTER INDEX {name} RENAME TO {name}{RETIRED}")
    await connection.execute(f"ALTER TABLE {shadow} RENAME TO {table}")
    # The storage parameters of the table it replaces, autovacuum on unless those turned it off.
    await connection.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    if options:
        await connection.execute(f"ALTER TABLE {table} SET ({', '.join(options)})")
    for name in names:
        kind = constraints.get(name)
        if kind == "p":
            await connection.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name}__shadow"
            )
        elif kind == "u":
            await connection.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}__shadow"
            )
        else:
            await connection.execute(f"ALTER INDEX {name}__shadow RENAME TO {name}")
