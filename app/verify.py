"""Integrity checks: the whole log (digests, the hash chain, dense positions and the head), and
each projection's table against a fold of the log by the code's version of that projection."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec

from app.ingest import event_digest
from app.rebuild import (
    EXTRACT_SQL,
    REBUILD_LOCK,
    SESSION_SETTINGS,
    STAGE_DDL,
    STAGED_IN,
    RebuildBusy,
    select_projections,
)

GENESIS_HASH = bytes(32)


class VerifyResult(msgspec.Struct, frozen=True):
    """Outcome of a verify run: `bad_position` is None when the log is intact."""

    events_checked: int
    last_position: int
    bad_position: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        """True when no problem was found."""
        return self.bad_position is None


async def verify_log(
    connection: asyncpg.Connection[Any],
    *,
    progress: Callable[[int], None] | None = None,
    prefetch: int = 5000,
) -> VerifyResult:
    """Recompute every digest and the chain while streaming the log (memory flat in its size)."""
    expected_position = 1
    previous_hash = GENESIS_HASH
    checked = 0
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        head = await connection.fetchrow("SELECT position, hash FROM log_head")
        assert head is not None
        cursor = connection.cursor(
            "SELECT position, sdkappid, command, user_id, event_time, received_at,"
            " metadata::text AS metadata, body, body_digest, digest, hash"
            " FROM events ORDER BY position",
            prefetch=prefetch,
        )
        async for row in cursor:
            position = row["position"]

            def bad(reason: str, at: int = position, seen: int = checked) -> VerifyResult:
                return VerifyResult(seen, at - 1, at, reason)

            if position != expected_position:
                return bad(f"position {expected_position} is missing", expected_position)
            body_digest = hashlib.sha256(row["body"].encode()).digest()
            if body_digest != row["body_digest"]:
                return bad("payload does not match its digest")
            digest = event_digest(
                sdkappid=row["sdkappid"],
                command=row["command"],
                user_id=row["user_id"],
                event_time=row["event_time"],
                received_at=row["received_at"],
                metadata=msgspec.json.decode(row["metadata"]),
                body_digest=body_digest,
            )
            if digest != row["digest"]:
                return bad("event record does not match its digest")
            chained = hashlib.sha256(previous_hash + digest).digest()
            if chained != row["hash"]:
                return bad("hash chain broken")
            previous_hash = chained
            expected_position += 1
            checked += 1
            if progress is not None and checked % prefetch == 0:
                progress(checked)
        last = expected_position - 1
        if head["position"] != last:
            return VerifyResult(checked, last, last + 1, f"log head says {head['position']} events")
        if bytes(head["hash"]) != previous_hash:
            return VerifyResult(checked, last, last, "log head hash does not match the chain")
    return VerifyResult(checked, last)


# The fold of the log, in temporary tables: the staged items (which are the folded
# profile_changes), each other projection's fill, and the rows in which a table and its fold differ.
FOLDED_STAGE = "folded__stage"
EXAMPLES = 5


class ProjectionCheck(msgspec.Struct, frozen=True):
    """How one projection's table compares with the fold of the log (not compared when stale)."""

    name: str
    rows: int = 0
    missing: int = 0  # rows of the fold that the table lacks
    unexpected: int = 0  # rows of the table that the fold does not give
    examples: list[str] = []  # a few of each, "missing: {…}" / "unexpected: {…}"
    stale: str | None = None

    @property
    def matches(self) -> bool:
        """True when the table is the fold of the log, row for row."""
        return self.stale is None and self.missing == 0 and self.unexpected == 0

    @property
    def verdict(self) -> str:
        """`matches`, `STALE`, or how many rows are missing and unexpected."""
        if self.stale is not None:
            return "STALE"
        return "matches" if self.matches else f"{self.missing} missing, {self.unexpected} unexpected"


async def verify_projections(
    connection: asyncpg.Connection[Any],
    names: Sequence[str] = (),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, list[ProjectionCheck]]:
    """Fold the log as a rebuild does and compare each named projection's table (all by default)
    with its fold, row for row, in one snapshot; returns the log position compared up to.

    RebuildBusy while a rebuild runs: it swaps the tables, and holds off until this check ends.
    """
    projections = select_projections(names)
    report = progress or (lambda _done, _total: None)
    if not await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", REBUILD_LOCK):
        raise RebuildBusy("a rebuild or another projection check is running; wait for it to finish")
    try:
        await connection.execute(SESSION_SETTINGS)
        async with connection.transaction(isolation="repeatable_read"):
            head = int(await connection.fetchval("SELECT position FROM log_head"))
            built = dict(await connection.fetch("SELECT name, version FROM projection_versions"))
            stale = {
                p.name: f"built with version {built.get(p.name)}, the code's is {p.version}:"
                f" run `profile-audit rebuild {p.name}`"
                for p in projections
                if built.get(p.name) != p.version
            }
            steps = 1 + len(projections)  # the fold's extract, then one comparison each
            report(0, steps)
            if any(p.name not in stale for p in projections):
                await connection.execute(
                    STAGE_DDL.format(kind="TEMP", stage=FOLDED_STAGE) + " ON COMMIT DROP"
                )
                await connection.execute(EXTRACT_SQL.format(stage=FOLDED_STAGE), 0, head)
            report(1, steps)
            checks = []
            for p in projections:
                checks.append(
                    ProjectionCheck(p.name, stale=stale[p.name])
                    if p.name in stale
                    else await _compare(connection, p.name, p.table, p.fill_sql)
                )
                report(1 + len(checks), steps)
        return head, checks
    finally:
        await connection.execute("SELECT pg_advisory_unlock(hashtext($1))", REBUILD_LOCK)


async def _compare(
    connection: asyncpg.Connection[Any], name: str, table: str, fill_sql: str
) -> ProjectionCheck:
    folded = FOLDED_STAGE
    if name != STAGED_IN:  # the staged items are that projection's fold already
        folded = f"{table}__folded"
        await connection.execute(f"CREATE TEMP TABLE {folded} (LIKE {table}) ON COMMIT DROP")
        await connection.execute(fill_sql.format(target=folded, stage=FOLDED_STAGE))
    counts, examples = {}, []
    for kind, query in (
        ("missing", f"TABLE {folded} EXCEPT ALL TABLE {table}"),
        ("unexpected", f"TABLE {table} EXCEPT ALL TABLE {folded}"),
    ):
        await connection.execute(f"CREATE TEMP TABLE {name}__{kind} ON COMMIT DROP AS {query}")
        counts[kind] = int(await connection.fetchval(f"SELECT count(*) FROM {name}__{kind}"))
        examples += [
            f"{kind}: {row}"
            for row in await connection.fetchval(
                f"SELECT array_agg(r ORDER BY r) FROM (SELECT row_to_json(d)::text AS r"
                f" FROM {name}__{kind} d ORDER BY r LIMIT $1) e",
                EXAMPLES,
            )
            or []
        ]
    rows = int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    return ProjectionCheck(name, rows, counts["missing"], counts["unexpected"], examples)
