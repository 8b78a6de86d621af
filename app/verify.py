"""Integrity check of the whole log: digests, the hash chain, dense positions and the head."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from app.ingest import event_digest

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
