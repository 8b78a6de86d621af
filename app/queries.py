"""Read queries over the profile projections, in plain SQL: one statement, one round trip, per read.

Each statement returns exactly one row (aggregates over one-row subqueries), so it carries the
projection versions even when the user has nothing to show: a stale projection costs no extra trip.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.projections import REGISTRY, profile_changes, profiles

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# One row: the name and the version each projection table was built with, by name (in code
# point order, as Python sorts).
VERSIONS = """
SELECT array_agg(name ORDER BY name COLLATE "C") AS names,
       array_agg(version ORDER BY name COLLATE "C") AS versions
  FROM projection_versions
"""

# The user's version: their deliveries with EventTime <= $3.
VERSION_AT = """
SELECT count(*) AS version FROM events
 WHERE sdkappid = $1 AND user_id = $2 AND event_time <= $3
"""

# The user's version now: their deliveries with an EventTime. user_version numbers every delivery
# of the user 1, 2, … so the last one is their count, read at the end of events_user_version
# instead of counting a heavy user's thousands of rows; those without EventTime are few.
VERSION_NOW = """
SELECT coalesce((SELECT e.user_version FROM events e WHERE e.sdkappid = $1 AND e.user_id = $2
                  ORDER BY e.user_version DESC LIMIT 1), 0)
       - (SELECT count(*) FROM events e
           WHERE e.sdkappid = $1 AND e.user_id = $2 AND e.event_time IS NULL) AS version
"""

PROFILE = f"""
SELECT v.names, v.versions, p.tags, p.tag_values, p.updated_at, n.version
  FROM ({VERSIONS}) v,
       (SELECT array_agg(tag ORDER BY tag) AS tags, array_agg(value::text ORDER BY tag) AS tag_values,
               max(event_time) AS updated_at
          FROM profiles
         WHERE sdkappid = $1 AND user_id = $2) p,
       ({VERSION_NOW}) n
"""

# Per tag, the change with the latest (event_time, position) at or before $3. The user's tags are
# found by skipping along profile_changes_pkey from one tag to the next, then each tag's change is
# one backward step from $3: a few index probes per tag, however long the user's history.
PROFILE_AT = f"""
WITH RECURSIVE tags(tag) AS (
    SELECT (SELECT c.tag FROM profile_changes c WHERE c.sdkappid = $1 AND c.user_id = $2
             ORDER BY c.tag LIMIT 1)
  UNION ALL
    SELECT (SELECT c.tag FROM profile_changes c WHERE c.sdkappid = $1 AND c.user_id = $2
               AND c.tag > t.tag
             ORDER BY c.tag LIMIT 1)
      FROM tags t WHERE t.tag IS NOT NULL
)
SELECT v.names, v.versions, p.tags, p.tag_values, p.updated_at, n.version
  FROM ({VERSIONS}) v,
       (SELECT array_agg(t.tag ORDER BY t.tag) AS tags,
               array_agg(latest.new::text ORDER BY t.tag) AS tag_values,
               max(latest.event_time) AS updated_at
          FROM tags t
         CROSS JOIN LATERAL (
               SELECT c.new, c.event_time FROM profile_changes c
                WHERE c.sdkappid = $1 AND c.user_id = $2 AND c.tag = t.tag AND c.event_time <= $3
                ORDER BY c.event_time DESC, c.position DESC
                LIMIT 1) latest) p,
       ({VERSION_AT}) n
"""

# A page of at most $9 events, newest first. The page's oldest event is found first: the $9th
# distinct event key along an index in {order}, a LIMIT the planner sees, so it reads the index in
# that order and stops there. (A dense_rank with a run condition stops as early, but the planner
# costs it as reading every change of the user: it kept the ordered index scan only while that
# scan looked sequential, i.e. while the index's leading column was the same in every row of the
# table, and with a second app's changes among the first one's it read a heavy user's whole
# history and sorted it.) Then the page is every matching change from that key on.
# $5..$8 bound the EventTime range and the keyset (callers pass INT64 sentinels for "no bound").
# Whether the user exists is read only when the page is empty (an initplan runs on first use).
# A change's old value is the `new` of the same tag's previous change. A page is a contiguous run
# of the user's changes (of one tag, with the tag filter), so that is the previous row of the tag
# in the page, and only each tag's oldest row in the page looks its predecessor up along
# profile_changes_pkey. The operator filter breaks that run: then every row looks it up.
# {matches} selects the user's changes after the keyset ($7, $8), {key} is an event's key in the
# order the page is read in, and {order} that order, descending; `_history` fills them in.
_HISTORY = f"""
SELECT v.names, v.versions, h.positions, h.event_times, h.received_ats, h.operators,
       h.platforms, h.client_ips, h.tags, h.olds, h.news,
       CASE WHEN h.changes = 0
            THEN EXISTS (SELECT 1 FROM events WHERE sdkappid = $1 AND user_id = $2)
       END AS user_exists
  FROM ({VERSIONS}) v,
       (SELECT count(*) AS changes,
               array_agg(position ORDER BY event_time DESC, position DESC, tag) AS positions,
               array_agg(event_time ORDER BY event_time DESC, position DESC, tag) AS event_times,
               array_agg(received_at ORDER BY event_time DESC, position DESC, tag) AS received_ats,
               array_agg(operator_account ORDER BY event_time DESC, position DESC, tag) AS operators,
               array_agg(opt_platform ORDER BY event_time DESC, position DESC, tag) AS platforms,
               array_agg(client_ip ORDER BY event_time DESC, position DESC, tag) AS client_ips,
               array_agg(tag ORDER BY event_time DESC, position DESC, tag) AS tags,
               array_agg(old::text ORDER BY event_time DESC, position DESC, tag) AS olds,
               array_agg(new::text ORDER BY event_time DESC, position DESC, tag) AS news
          FROM (SELECT page.*,
                       coalesce(
                           CASE WHEN $4::text IS NULL
                                THEN lag(new) OVER (PARTITION BY tag ORDER BY event_time, position)
                           END,
                           (SELECT o.new FROM profile_changes o
                             WHERE o.sdkappid = page.sdkappid AND o.user_id = page.user_id
                               AND o.tag = page.tag
                               AND (o.event_time, o.position) < (page.event_time, page.position)
                             ORDER BY o.event_time DESC, o.position DESC
                             LIMIT 1)) AS old
                  FROM (SELECT c.* FROM profile_changes c
                         WHERE {{matches}}
                           AND ({{key}}) >= (
                               SELECT {{key}}
                                 FROM (SELECT DISTINCT {{key}} FROM profile_changes c
                                        WHERE {{matches}}
                                        ORDER BY {{order}}
                                        LIMIT $9) c
                                ORDER BY {{key}}
                                LIMIT 1)) page) p) h
"""


def _history(page: str, key: str) -> str:
    """_HISTORY for the changes `page` selects (beyond the user, operator and time filters), read
    newest first along `key`, an event's key (a comma-separated column list)."""
    return _HISTORY.format(
        matches=f"""c.sdkappid = $1 AND c.user_id = $2 AND {page}
                           AND ($4::text IS NULL OR c.operator_account = $4)
                           AND c.event_time >= $5 AND c.event_time <= $6""",
        key=key,
        order=", ".join(f"{column} DESC" for column in key.split(", ")),
    )


# Any tag, or the tag $3: along profile_changes_by_user_time.
HISTORY = _history(
    "($3::text IS NULL OR c.tag = $3) AND (c.event_time, c.position) < ($7, $8)",
    "c.event_time, c.position",
)

# One tag: along profile_changes_pkey, which holds each tag's changes in order. With `tag = $3`
# the generic plan (a prepared statement's from its sixth run) read the user's every change along
# by_user_time instead, filtering the tag: the time bounds' default estimates leave both indexes
# at one row. A range on the tag and the tag in the page's order leave only the pkey able to give
# that order without a sort; the tag is still bounded on both sides, so the scan stops at its end.
HISTORY_OF_TAG = _history(
    "(c.tag, c.event_time, c.position) < ($3::text, $7, $8) AND c.tag >= $3::text",
    "c.tag, c.event_time, c.position",
)

EXPECTED_NAMES = sorted(REGISTRY)
EXPECTED_VERSIONS = [REGISTRY[name].version for name in EXPECTED_NAMES]
# The projections each read depends on: only a stale one of those makes it answer 503.
PROFILE_READS = (profiles.NAME,)
CHANGES_READS = (profile_changes.NAME,)


class ProfileRead(msgspec.Struct, frozen=True):
    """A profile read: the stale projections, tag → value (raw JSON), its newest EventTime, version."""

    problems: list[str]
    profile: dict[str, msgspec.Raw]
    updated_at: int | None
    version: int


class Change(msgspec.Struct, frozen=True):
    """One tag changed by one event."""

    position: int
    event_time: int
    received_at: datetime
    operator_account: str | None
    opt_platform: str | None
    client_ip: str | None
    tag: str
    old: msgspec.Raw | None
    new: msgspec.Raw


class HistoryRead(msgspec.Struct, frozen=True):
    """A history read: the stale projections, the changes, and (when none) whether the user exists."""

    problems: list[str]
    changes: list[Change]
    user_exists: bool | None


def version_problems(
    names: list[str] | None, versions: list[int] | None, needed: Collection[str] = EXPECTED_NAMES
) -> list[str]:
    """The `needed` projections whose tables were built with another version than the code's."""
    if names == EXPECTED_NAMES and versions == EXPECTED_VERSIONS:
        return []
    built = dict(zip(names or [], versions or [], strict=True))
    return [
        f"projection {p.name} is at version {built.get(p.name)}, code expects {p.version}:"
        " run profile-audit rebuild"
        for p in REGISTRY.values()
        if p.name in needed and built.get(p.name) != p.version
    ]


async def stale_projections(connection: asyncpg.Connection[Any]) -> list[str]:
    """Projections whose tables were built with another version than the code's."""
    row = await connection.fetchrow(VERSIONS)
    assert row is not None  # an aggregate without GROUP BY: always one row
    return version_problems(row["names"], row["versions"])


async def read_profile(
    connection: asyncpg.Connection[Any], sdkappid: int, user_id: str, at: int | None
) -> ProfileRead:
    """The user's tag values now (or as of `at`, epoch ms) and their version then."""
    if at is None:
        row = await connection.fetchrow(PROFILE, sdkappid, user_id)
        needed = PROFILE_READS
    else:
        row = await connection.fetchrow(PROFILE_AT, sdkappid, user_id, at)
        needed = CHANGES_READS
    assert row is not None
    names, versions, tags, values, updated_at, version = row
    profile = dict(zip(tags, map(msgspec.Raw, values), strict=True)) if tags else {}
    return ProfileRead(version_problems(names, versions, needed), profile, updated_at, version)


async def read_history(
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
) -> HistoryRead:
    """The user's changes, newest first, at most `limit` events, strictly after `before`."""
    after_time, after_position = before or (INT64_MAX, INT64_MAX)
    row = await connection.fetchrow(
        HISTORY if tag is None else HISTORY_OF_TAG,
        sdkappid,
        user_id,
        tag,
        operator,
        INT64_MIN if since is None else since,
        INT64_MAX if until is None else until,
        after_time,
        after_position,
        limit,
    )
    assert row is not None
    names, versions, positions, times, received, operators, platforms, ips, tags, olds, news, exists = row
    problems = version_problems(names, versions, CHANGES_READS)
    if positions is None:  # no change matched: the aggregates are NULL
        return HistoryRead(problems, [], exists)
    olds = [None if old is None else msgspec.Raw(old) for old in olds]
    columns = (positions, times, received, operators, platforms, ips, tags, olds, map(msgspec.Raw, news))
    return HistoryRead(problems, [Change(*fields) for fields in zip(*columns, strict=True)], exists)


async def warm_reads(connection: asyncpg.Connection[Any]) -> None:
    """Prepare every read statement on `connection` (for an app id no user has: nothing is read).

    A connection's first read otherwise pays the preparation and asyncpg's type introspection.
    """
    await read_profile(connection, 0, "", None)
    await read_profile(connection, 0, "", 0)
    for tag in (None, ""):
        await read_history(
            connection, 0, "", tag=tag, operator=None, since=None, until=None, before=None, limit=1
        )
