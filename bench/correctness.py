"""After the real service's run: every 200 is in the log, nothing more than was sent, chain intact,
and the projections are the fold of the log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.config import asyncpg_dsn
from app.verify import ProjectionCheck, verify_log, verify_projections


@dataclass(frozen=True)
class Correctness:
    """Events stored against responses seen, and the verify outcome."""

    events: int
    transactions: int
    ok_responses: int
    unanswered: int
    other_responses: int
    intact: bool
    verify_detail: str
    projections_match: bool | None = None  # None: not checked
    projections_detail: str = ""

    @property
    def mean_batch(self) -> float:
        """Events per committing transaction (group-commit batch size)."""
        return self.events / self.transactions if self.transactions else 0.0

    @property
    def exact(self) -> bool:
        """Stored events = 200 responses + requests still in flight when wrk stopped."""
        return self.events == self.ok_responses + self.unanswered

    @property
    def passed(self) -> bool:
        """Every 200 is stored, nothing beyond what was sent is, the chain verifies and the
        projections are the fold of the log."""
        upper = self.ok_responses + self.unanswered + self.other_responses
        return self.intact and self.projections_match is True and self.ok_responses <= self.events <= upper

    def summary(self) -> str:
        """One line for the console."""
        verdict = "PASS" if self.passed else "FAIL"
        extra = self.events - self.ok_responses
        return (
            f"{verdict}: {self.events} events stored for {self.ok_responses} 200 responses"
            f" (+{extra}: of {self.unanswered} requests still in flight when wrk stopped,"
            f" and {self.other_responses} non-200 replies, which may be stored too);"
            f" verify_log: {self.verify_detail}; projections: {self.projections_detail};"
            f" {self.transactions} commits, mean batch {self.mean_batch:.1f} events"
        )


def describe(head: int, checks: list[ProjectionCheck]) -> str:
    """One line: each projection against the fold of the log up to `head`."""
    parts = [f"{c.name} ({c.rows:,} rows) {c.verdict}" for c in checks]
    return f"{'; '.join(parts)} (the fold of the log up to position {head:,})"


async def _check_projections(connection: asyncpg.Connection[Any]) -> tuple[bool, str]:
    head, checks = await verify_projections(connection)
    return all(c.matches for c in checks), describe(head, checks)


async def _projections(url: str) -> tuple[bool, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await _check_projections(connection)
    finally:
        await connection.close()


def check_projections(url: str) -> tuple[bool, str]:
    """app.verify.verify_projections over the database: (all match, one-line detail)."""
    return asyncio.run(_projections(url))


async def _check(url: str) -> tuple[int, int, bool, str, bool, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        events = int(await connection.fetchval("SELECT count(*) FROM events"))
        transactions = int(await connection.fetchval("SELECT count(DISTINCT xmin::text) FROM events"))
        result = await verify_log(connection)
        matches, projections = await _check_projections(connection)
    finally:
        await connection.close()
    if result.intact:
        detail = f"intact ({result.events_checked} events, last position {result.last_position})"
    else:
        detail = f"TAMPERED at position {result.bad_position}: {result.reason}"
    return events, transactions, result.intact, detail, matches, projections


def check_log(url: str, *, ok_responses: int, unanswered: int, other_responses: int) -> Correctness:
    """Count the stored events, verify the chain and check the projections of the real service's database."""
    events, transactions, intact, detail, matches, projections = asyncio.run(_check(url))
    return Correctness(
        events, transactions, ok_responses, unanswered, other_responses, intact, detail, matches, projections
    )
