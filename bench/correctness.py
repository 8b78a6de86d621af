"""After the real service's run: every 200 is in the log, nothing more than was sent, chain intact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from app.config import asyncpg_dsn
from app.verify import verify_log


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
        """Every 200 is stored, nothing beyond what was sent is, and the chain verifies."""
        upper = self.ok_responses + self.unanswered + self.other_responses
        return self.intact and self.ok_responses <= self.events <= upper

    def summary(self) -> str:
        """One line for the console."""
        verdict = "PASS" if self.passed else "FAIL"
        extra = self.events - self.ok_responses
        return (
            f"{verdict}: {self.events} events stored for {self.ok_responses} 200 responses"
            f" (+{extra}: of {self.unanswered} requests still in flight when wrk stopped,"
            f" and {self.other_responses} non-200 replies, which may be stored too);"
            f" verify_log: {self.verify_detail};"
            f" {self.transactions} commits, mean batch {self.mean_batch:.1f} events"
        )


async def _check(url: str) -> tuple[int, int, bool, str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        events = int(await connection.fetchval("SELECT count(*) FROM events"))
        transactions = int(await connection.fetchval("SELECT count(DISTINCT xmin::text) FROM events"))
        result = await verify_log(connection)
    finally:
        await connection.close()
    if result.intact:
        detail = f"intact ({result.events_checked} events, last position {result.last_position})"
    else:
        detail = f"TAMPERED at position {result.bad_position}: {result.reason}"
    return events, transactions, result.intact, detail


def check_log(url: str, *, ok_responses: int, unanswered: int, other_responses: int) -> Correctness:
    """Count the stored events and verify the chain of the real service's database."""
    events, transactions, intact, detail = asyncio.run(_check(url))
    return Correctness(events, transactions, ok_responses, unanswered, other_responses, intact, detail)
