"""The event store: the only code that writes `events`, and the reads over the log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.ingest import NewEvent

APPEND_SQL = """
SELECT idx, event_position, duplicate, lock_wait
  FROM append_events($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                     $6::jsonb[], $7::text[], $8::bytea[], $9::bytea[])
"""

SELECT_EVENTS_SQL = """
SELECT position, sdkappid, command, user_id, user_version, event_time, received_at,
       metadata::text AS metadata, body, digest, hash
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2
"""


class Appended(msgspec.Struct, frozen=True):
    """Where an appended delivery sits in the log, and whether it was there already."""

    position: int
    duplicate: bool


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as recorded in the log."""

    position: int
    sdkappid: int
    command: str
    user_id: str | None
    user_version: int | None
    event_time: int | None
    received_at: datetime
    metadata: msgspec.Raw
    body: msgspec.Raw
    digest: bytes
    hash: bytes


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["position"],
        sdkappid=row["sdkappid"],
        command=row["command"],
        user_id=row["user_id"],
        user_version=row["user_version"],
        event_time=row["event_time"],
        received_at=row["received_at"],
        metadata=msgspec.Raw(row["metadata"].encode()),
        body=msgspec.Raw(row["body"].encode()),
        digest=row["digest"],
        hash=row["hash"],
    )


class EventStore:
    """Appends batches of events and reads the log, over one asyncpg connection at a time."""

    async def insert_events(
        self, connection: asyncpg.Connection[Any], events: Sequence[NewEvent]
    ) -> list[Appended]:
        """Append `events` in one transaction and one round trip; duplicates are not stored again."""
        appended, _lock_wait = await self.insert_batch(connection, events)
        return appended

    async def insert_batch(
        self, connection: asyncpg.Connection[Any], events: Sequence[NewEvent]
    ) -> tuple[list[Appended], float]:
        """As insert_events, also answering how long the batch waited for the append lock (s)."""
        if not events:
            return [], 0.0
        rows = await connection.fetch(
            APPEND_SQL,
            [e.sdkappid for e in events],
            [e.command for e in events],
            [e.user_id for e in events],
            [e.event_time for e in events],
            [e.received_at for e in events],
            [msgspec.json.encode(e.metadata).decode() for e in events],
            [e.body for e in events],
            [e.body_digest for e in events],
            [e.digest for e in events],
        )
        result: list[Appended | None] = [None] * len(events)
        for row in rows:
            result[row["idx"] - 1] = Appended(row["event_position"], row["duplicate"])
        if any(r is None for r in result):  # pragma: no cover - the function answers every input
            raise RuntimeError("append_events did not answer for every event")
        return [r for r in result if r is not None], float(rows[0]["lock_wait"])

    async def select_events(
        self, connection: asyncpg.Connection[Any], after: int, limit: int
    ) -> list[StoredEvent]:
        """Events with position > `after`, in position order."""
        rows = await connection.fetch(SELECT_EVENTS_SQL, after, limit)
        return [_stored(row) for row in rows]

    async def insert_rejected(
        self,
        connection: asyncpg.Connection[Any],
        *,
        sdkappid: int,
        query: dict[str, str],
        body: bytes,
        reason: str,
    ) -> int:
        """Keep an authenticated delivery that could not be recorded as an event; returns its id."""
        rejected_id = await connection.fetchval(
            "INSERT INTO rejected_deliveries (sdkappid, query, body, reason)"
            " VALUES ($1, $2::jsonb, $3, $4) RETURNING id",
            sdkappid,
            msgspec.json.encode(
                {k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd") for k, v in query.items()}
            ).decode(),
            body,
            reason,
        )
        return int(rejected_id)

    async def head(self, connection: asyncpg.Connection[Any]) -> tuple[int, bytes]:
        """The last position and chain hash."""
        row = await connection.fetchrow("SELECT position, hash FROM log_head")
        assert row is not None
        return int(row["position"]), bytes(row["hash"])
