"""The log is append-only in the database itself, and verify_log catches every kind of tampering."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.ingest import canonical_json, event_digest
from app.verify import verify_log
from tests.conftest import count_rows, fixture_deliveries

EVENTS = len(fixture_deliveries())


@pytest.fixture
async def filled(client: AsyncTestClient[Any], db: asyncpg.Connection[Any]) -> asyncpg.Connection[Any]:
    """The test database with every fixture delivery recorded (positions 1..EVENTS)."""
    for delivery in fixture_deliveries():
        reply = await client.post("/callback", params=delivery["query"], json=delivery["body"])
        assert reply.status_code == 200, reply.text
    assert await count_rows(db, "events") == EVENTS
    return db


# --- append-only ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET body = '{}' WHERE position = 2",
        "UPDATE events SET metadata = '{}'::jsonb",
        "UPDATE events SET position = position + 100 WHERE position = 1",
        "DELETE FROM events WHERE position = 3",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ],
)
async def test_database_refuses_to_change_events(filled: asyncpg.Connection[Any], statement: str) -> None:
    before = await filled.fetch("SELECT * FROM events ORDER BY position")
    with pytest.raises(asyncpg.PostgresError) as refused:
        await filled.execute(statement)
    assert isinstance(refused.value, asyncpg.InsufficientPrivilegeError)
    assert "append-only" in str(refused.value)
    assert await filled.fetch("SELECT * FROM events ORDER BY position") == before
    assert (await verify_log(filled)).intact


async def test_refusal_holds_inside_a_transaction(filled: asyncpg.Connection[Any]) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with filled.transaction():
            await filled.execute("DELETE FROM events WHERE position = 1")
    assert await count_rows(filled, "events") == EVENTS


# --- verify_log -------------------------------------------------------------------------------


async def test_empty_log_is_intact(db: asyncpg.Connection[Any]) -> None:
    result = await verify_log(db)
    assert result.intact
    assert (result.events_checked, result.last_position) == (0, 0)


async def test_good_log_is_intact(filled: asyncpg.Connection[Any]) -> None:
    progress: list[int] = []
    result = await verify_log(filled, progress=progress.append, prefetch=2)
    assert result.intact
    assert result.bad_position is None and result.reason is None
    assert result.events_checked == EVENTS
    assert result.last_position == EVENTS
    assert progress == list(range(2, EVENTS + 1, 2))


async def tamper(connection: asyncpg.Connection[Any], *statements: str, args: tuple[Any, ...] = ()) -> None:
    """Change the log behind the service's back: the superuser first disables the triggers."""
    await connection.execute("ALTER TABLE events DISABLE TRIGGER USER")
    for statement in statements:
        await connection.execute(statement, *args)


async def assert_tampered(connection: asyncpg.Connection[Any], position: int, reason_mentions: str) -> None:
    result = await verify_log(connection)
    assert not result.intact
    assert result.bad_position == position, result
    assert result.reason is not None and reason_mentions in result.reason, result


async def test_edited_payload(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, """UPDATE events SET body = replace(body, '"nick1"', '"evil"') WHERE position = 1""")
    assert "evil" in await filled.fetchval("SELECT body FROM events WHERE position = 1")
    await assert_tampered(filled, 1, "payload")


async def test_edited_payload_in_the_middle_with_its_body_digest_recomputed(
    filled: asyncpg.Connection[Any],
) -> None:
    await tamper(
        filled,
        """UPDATE events SET body = replace(body, '"alice"', '"mallory"'),
                             body_digest = sha256(convert_to(replace(body, '"alice"', '"mallory"'), 'UTF8'))
            WHERE position = 2""",
    )
    await assert_tampered(filled, 2, "event record")


@pytest.mark.parametrize(
    "change",
    [
        "metadata = jsonb_set(metadata, '{ClientIP}', '\"6.6.6.6\"')",
        "user_id = 'mallory'",
        "event_time = event_time + 1",
        "sdkappid = 1400000001",
        "received_at = received_at + interval '1 microsecond'",
        "command = 'State.StateChange'",
    ],
)
async def test_edited_record_field(filled: asyncpg.Connection[Any], change: str) -> None:
    await tamper(filled, f"UPDATE events SET {change} WHERE position = 4")
    await assert_tampered(filled, 4, "event record")


async def test_edited_hash(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, "UPDATE events SET hash = sha256(hash) WHERE position = 3")
    await assert_tampered(filled, 3, "hash chain")


async def test_event_rewritten_consistently_is_caught_by_the_next_link(
    filled: asyncpg.Connection[Any],
) -> None:
    """Body, digests and its own hash recomputed: the following event's hash no longer chains."""
    row = await filled.fetchrow("SELECT * FROM events WHERE position = 3")
    previous = await filled.fetchval("SELECT hash FROM events WHERE position = 2")
    assert row is not None
    body = json.loads(row["body"])
    body["ProfileItem"][0]["Value"] = 1
    new_body = canonical_json(body)
    body_digest = hashlib.sha256(new_body).digest()
    digest = event_digest(
        sdkappid=row["sdkappid"],
        command=row["command"],
        user_id=row["user_id"],
        event_time=row["event_time"],
        received_at=row["received_at"],
        metadata=json.loads(row["metadata"]),
        body_digest=body_digest,
    )
    await tamper(
        filled,
        "UPDATE events SET body = $1, body_digest = $2, digest = $3, hash = $4 WHERE position = 3",
        args=(new_body.decode(), body_digest, digest, hashlib.sha256(previous + digest).digest()),
    )
    await assert_tampered(filled, 4, "hash chain")


async def test_deleted_row_in_the_middle(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, "DELETE FROM events WHERE position = 3")
    await assert_tampered(filled, 3, "missing")


async def test_deleted_first_row(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, "DELETE FROM events WHERE position = 1")
    await assert_tampered(filled, 1, "missing")


async def test_deleted_row_at_the_end(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, f"DELETE FROM events WHERE position = {EVENTS}")
    await assert_tampered(filled, EVENTS, "head")


async def test_truncated_log(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, "DELETE FROM events")
    await assert_tampered(filled, 1, "head")


async def test_two_swapped_rows(filled: asyncpg.Connection[Any]) -> None:
    await tamper(
        filled,
        "UPDATE events SET position = -1 WHERE position = 2",
        "UPDATE events SET position = 2 WHERE position = 3",
        "UPDATE events SET position = 3 WHERE position = -1",
    )
    bodies = await filled.fetch(
        "SELECT position, body FROM events WHERE position IN (2, 3) ORDER BY position"
    )
    assert json.loads(bodies[0]["body"]) == fixture_deliveries()[2]["body"]
    await assert_tampered(filled, 2, "hash chain")


async def test_edited_log_head(filled: asyncpg.Connection[Any]) -> None:
    await tamper(filled, "UPDATE log_head SET hash = sha256(hash)")
    await assert_tampered(filled, EVENTS, "head")


async def test_tampering_is_found_after_more_appends(
    client: AsyncTestClient[Any], filled: asyncpg.Connection[Any]
) -> None:
    await tamper(filled, """UPDATE events SET body = replace(body, '"bob"', '"eve"') WHERE position = 3""")
    await filled.execute("ALTER TABLE events ENABLE TRIGGER USER")
    reply = await client.post(
        "/callback",
        params={"SdkAppid": "1400000000", "CallbackCommand": "State.StateChange"},
        json={"CallbackCommand": "State.StateChange", "EventTime": 1},
    )
    assert reply.status_code == 200
    await assert_tampered(filled, 3, "payload")
