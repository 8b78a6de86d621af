"""The keys of the log and the projections: bytewise identifiers, no redundant index."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.rebuild import rebuild_projections

KEY_COLUMNS = [("events", "user_id"), ("profiles", "user_id"), ("profiles", "tag")]
KEY_COLUMNS += [("profile_changes", "user_id"), ("profile_changes", "tag")]


async def collations(db: asyncpg.Connection[Any]) -> dict[tuple[str, str], str]:
    rows = await db.fetch(
        "SELECT c.relname, a.attname, coalesce(l.collname, '') AS collname"
        "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        "  LEFT JOIN pg_collation l ON l.oid = a.attcollation"
        " WHERE c.relname IN ('events', 'profiles', 'profile_changes') AND a.attname IN ('user_id', 'tag')"
    )
    return {(r["relname"], r["attname"]): r["collname"] for r in rows}


async def change_indexes(db: asyncpg.Connection[Any]) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS definition"
        "  FROM pg_index WHERE indrelid = 'profile_changes'::regclass"
    )
    return {r["name"]: r["definition"].partition(" USING btree ")[2] for r in rows}


async def test_identifiers_compare_bytewise_and_keep_doing_so_after_a_rebuild(
    db: asyncpg.Connection[Any],
) -> None:
    assert await collations(db) == dict.fromkeys(KEY_COLUMNS, "C")
    await rebuild_projections(db)
    assert await collations(db) == dict.fromkeys(KEY_COLUMNS, "C")


async def test_profile_changes_has_its_key_and_the_history_index_only(db: asyncpg.Connection[Any]) -> None:
    expected = {
        "profile_changes_pkey": '(user_id, sdkappid, tag, event_time, "position")',
        "profile_changes_by_user_time": '(user_id, sdkappid, event_time DESC, "position" DESC)',
    }
    assert await change_indexes(db) == expected
    await rebuild_projections(db)
    assert await change_indexes(db) == expected
