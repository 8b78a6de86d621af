"""Thin read queries over the profile projections, in plain SQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from app.projections import REGISTRY

CURRENT_PROFILE = """
SELECT tag, value::text AS value, event_time FROM profiles
 WHERE sdkappid = $1 AND user_id = $2
 ORDER BY tag
"""

PROFILE_AT = """
SELECT DISTINCT ON (tag) tag, new::text AS value, event_time FROM profile_changes
 WHERE sdkappid = $1 AND user_id = $2 AND event_time <= $3
 ORDER BY tag, event_time DESC, position DESC
"""

VERSION_AT = """
SELECT count(*) FROM events
 WHERE sdkappid = $1 AND user_id = $2 AND event_time <= $3
"""

HISTORY = """
WITH page AS (
    SELECT event_time, position FROM profile_changes
     WHERE sdkappid = $1 AND user_id = $2
       AND ($3::text IS NULL OR tag = $3)
       AND ($4::text IS NULL OR operator_account = $4)
       AND ($5::bigint IS NULL OR event_time >= $5)
       AND ($6::bigint IS NULL OR event_time <= $6)
       AND ($7::bigint IS NULL OR (event_time, position) < ($7, $8::bigint))
     GROUP BY event_time, position
     ORDER BY event_time DESC, position DESC
     LIMIT $9
)
SELECT c.position, c.event_time, c.received_at, c.operator_account, c.opt_platform,
       c.client_ip, c.tag, c.old::text AS old, c.new::text AS new
  FROM profile_changes c JOIN page p ON p.position = c.position
 WHERE ($3::text IS NULL OR c.tag = $3)
 ORDER BY c.event_time DESC, c.position DESC, c.tag
"""

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM events WHERE sdkappid = $1 AND user_id = $2)"

INT64_MAX = 2**63 - 1


class TagValue(msgspec.Struct, frozen=True):
    """A tag's value (raw JSON, type as received) and the EventTime that set it."""

    tag: str
    value: msgspec.Raw
    event_time: int


class Change(msgspec.Struct, frozen=True):
    """One tag changed by one event."""

    position: int
    event_time: int
    received_at: Any
    operator_account: str | None
    opt_platform: str | None
    client_ip: str | None
    tag: str
    old: msgspec.Raw | None
    new: msgspec.Raw


async def stale_projections(connection: asyncpg.Connection[Any]) -> list[str]:
    """Projections whose tables were built with another version than the code's."""
    rows = await connection.fetch("SELECT name, version FROM projection_versions")
    built = {row["name"]: row["version"] for row in rows}
    return [
        f"projection {p.name} is at version {built.get(p.name)}, code expects {p.version}:"
        " run profile-audit rebuild"
        for p in REGISTRY.values()
        if built.get(p.name) != p.version
    ]


async def select_profile(
    connection: asyncpg.Connection[Any], sdkappid: int, user_id: str, at: int | None
) -> tuple[list[TagValue], int]:
    """The user's tag values now (or as of `at`, epoch ms) and their version then."""
    if at is None:
        rows = await connection.fetch(CURRENT_PROFILE, sdkappid, user_id)
        version = await connection.fetchval(VERSION_AT, sdkappid, user_id, INT64_MAX)
    else:
        rows = await connection.fetch(PROFILE_AT, sdkappid, user_id, at)
        version = await connection.fetchval(VERSION_AT, sdkappid, user_id, at)
    values = [TagValue(row["tag"], msgspec.Raw(row["value"].encode()), row["event_time"]) for row in rows]
    return values, int(version or 0)


async def select_history(
    connection: asyncpg.Connection[Any],
    sdkappid: int,
    user_id: str,
    *,
    tag: str | None,
    operator: str | None,
    since: int | None,
    until: int | None,
    before: tuple[int, int] | None,
    limit: int,
) -> list[Change]:
    """The user's changes, newest first, at most `limit` events, strictly after `before`."""
    rows = await connection.fetch(
        HISTORY,
        sdkappid,
        user_id,
        tag,
        operator,
        since,
        until,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [
        Change(
            position=row["position"],
            event_time=row["event_time"],
            received_at=row["received_at"],
            operator_account=row["operator_account"],
            opt_platform=row["opt_platform"],
            client_ip=row["client_ip"],
            tag=row["tag"],
            old=msgspec.Raw(row["old"].encode()) if row["old"] is not None else None,
            new=msgspec.Raw(row["new"].encode()),
        )
        for row in rows
    ]


async def user_exists(connection: asyncpg.Connection[Any], sdkappid: int, user_id: str) -> bool:
    """True when the log has any event for the user."""
    return bool(await connection.fetchval(USER_EXISTS, sdkappid, user_id))
