"""Export and import of the log (app.transfer): a round trip into a fresh database reproduces it."""

from __future__ import annotations

import asyncio
import io
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.config import asyncpg_dsn
from app.transfer import ImportReport, export_events, import_lines, parse_line
from app.verify import verify_log
from tests.conftest import (
    AUTH,
    NICKNAME_500_BYTES,
    OTHER_SDKAPPID,
    SDKAPPID,
    count_rows,
    fixture_deliveries,
    make_settings,
    portrait_body,
    portrait_query,
    with_database,
)

BOTH_APPS = (SDKAPPID, OTHER_SDKAPPID)
MAX_BODY = 64 * 1024
WRITTEN_TABLES = ("events", "profiles", "profile_changes", "rejected_deliveries")


# --- fixtures and helpers --------------------------------------------------------------------


async def _admin(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def new_database(server_url: str, template_database: str) -> Iterator[Callable[[], str]]:
    """Makes more fresh databases at head (from the suite's template), dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"pa_transfer_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
        made.append(name)
        return with_database(server_url, name)

    yield make
    for name in made:
        asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def target_url(new_database: Callable[[], str]) -> str:
    """A second fresh database to import into."""
    return new_database()


@pytest.fixture
async def target(target_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the second database."""
    connection = await asyncpg.connect(asyncpg_dsn(target_url))
    yield connection
    await connection.close()


@pytest.fixture
async def target_client(target_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app on the second database."""
    async with AsyncTestClient(app=create_app(make_settings(target_url))) as test_client:
        yield test_client


def generated_deliveries(count: int, seed: int = 7) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Portrait sets for a few users in both apps (late and tied EventTimes, odd user ids, CJK and
    emoji values, numbers), other commands, and exact redeliveries."""
    rng = random.Random(seed)
    users = ["alice", "bob", "u/1 x", "用户 🌸", "a%2Fb", "trailing ", "x" * 200]
    tags = ["Tag_Profile_IM_Nick", "Tag_Profile_IM_Level", "Tag_Profile_Custom_Vip", "Tag_Profile_IM_Image"]
    out: list[tuple[dict[str, str], dict[str, Any]]] = []
    for i in range(count):
        app = rng.choice(BOTH_APPS)
        roll = rng.random()
        if roll < 0.1 and out:
            out.append(rng.choice(out))  # a redelivery: stored once
            continue
        if roll < 0.2:
            query = portrait_query(app, CallbackCommand="State.StateChange", OptPlatform="Android")
            body: dict[str, Any] = {
                "CallbackCommand": "State.StateChange",
                "EventTime": 1_700_000_000_000 + i,
                "Info": {"Action": rng.choice(["Login", "Logout"]), "To_Account": rng.choice(users)},
            }
            out.append((query, body))
            continue
        user = rng.choice(users)
        items: dict[str, str | int] = {}
        for tag in rng.sample(tags, rng.randint(1, 3)):
            items[tag] = (
                rng.randint(0, 2**32 - 1)
                if tag == "Tag_Profile_IM_Level"
                else rng.choice(["", "nick", "昵称", NICKNAME_500_BYTES, f"v{i}", 'line\nbreak "q" \\'])
            )
        event_time = 1_700_000_000_000 + rng.randint(0, 50) * 1000  # collisions: ties by position
        extra = {"RequestTime": str(1_700_000_000 + i)} if rng.random() < 0.3 else {}
        query = portrait_query(app, OptPlatform=rng.choice(["iOS", "Web", "RESTAPI"]), **extra)
        out.append((query, portrait_body(user, event_time, **items)))
    return out


async def populate(client: AsyncTestClient[Any], generated: int = 150) -> int:
    """Record the shared fixtures and `generated` deliveries through POST /callback; the event count."""
    deliveries = [(d["query"], d["body"]) for d in fixture_deliveries()] + generated_deliveries(generated)
    for query, body in deliveries:
        reply = await client.post("/callback", params=query, json=body)
        assert reply.status_code == 200, reply.text
    events = await client.get("/events", params={"limit": 1000}, headers=AUTH)
    assert events.status_code == 200, events.text
    return len(events.json()["events"])


async def export_bytes(connection: asyncpg.Connection[Any], *, after: int = 0, page_size: int = 7) -> bytes:
    out = io.BytesIO()
    await export_events(connection, out.write, after=after, page_size=page_size)
    return out.getvalue()


async def run_import(
    connection: asyncpg.Connection[Any],
    data: bytes | list[bytes],
    *,
    dry_run: bool = False,
    batch_size: int = 13,
    sdkappids: tuple[int, ...] = BOTH_APPS,
    max_body_bytes: int = MAX_BODY,
) -> tuple[ImportReport, dict[int, str]]:
    rejects: dict[int, str] = {}
    lines = data if isinstance(data, list) else io.BytesIO(data)
    report = await import_lines(
        connection,
        lines,
        sdkappids=sdkappids,
        max_body_bytes=max_body_bytes,
        dry_run=dry_run,
        batch_size=batch_size,
        on_reject=rejects.__setitem__,
    )
    return report, rejects


async def users_of(connection: asyncpg.Connection[Any]) -> list[tuple[int, str]]:
    rows = await connection.fetch(
        "SELECT DISTINCT sdkappid, user_id FROM events WHERE user_id IS NOT NULL ORDER BY 1, 2"
    )
    return [(row["sdkappid"], row["user_id"]) for row in rows]


async def answers(client: AsyncTestClient[Any], sdkappid: int, user: str) -> tuple[Any, Any]:
    """GET /users/{user}/profile and the whole /profile-history of one user."""
    path = f"/users/{quote(user, safe='')}"
    profile = await client.get(f"{path}/profile", params={"sdkappid": sdkappid}, headers=AUTH)
    history = await client.get(
        f"{path}/profile-history", params={"sdkappid": sdkappid, "limit": 500}, headers=AUTH
    )
    assert profile.status_code == 200, profile.text
    assert history.status_code == 200, history.text
    assert history.json()["next_cursor"] is None
    return profile.json(), history.json()


async def snapshot(connection: asyncpg.Connection[Any]) -> dict[str, Any]:
    """Everything an import could write."""
    tables = {t: await count_rows(connection, t) for t in WRITTEN_TABLES}
    head = await connection.fetchrow("SELECT position, hash FROM log_head")
    return {**tables, "head": tuple(head) if head else None}


# --- export ----------------------------------------------------------------------------------


async def test_export_lines_are_the_events_api_items(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    count = await populate(client)
    out = io.BytesIO()
    report = await export_events(db, out.write, page_size=7)
    assert (report.events, report.last_position) == (count, count)
    data = out.getvalue()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    assert len(lines) == count
    api = (await client.get("/events", params={"limit": 1000}, headers=AUTH)).json()["events"]
    assert [json.loads(line) for line in lines] == api
    assert [json.loads(line)["position"] for line in lines] == list(range(1, count + 1))
    # the page size does not change the output
    assert await export_bytes(db, page_size=5000) == data


async def test_export_after_a_position(client: AsyncTestClient[Any], db: asyncpg.Connection[Any]) -> None:
    count = await populate(client, generated=20)
    whole = (await export_bytes(db)).splitlines()
    for after in (0, 1, 6, 7, count - 1):
        out = io.BytesIO()
        report = await export_events(db, out.write, after=after, page_size=3)
        assert out.getvalue().splitlines() == whole[after:]
        assert (report.events, report.last_position) == (count - after, count)
    for after in (count, count + 10):
        out = io.BytesIO()
        report = await export_events(db, out.write, after=after)
        assert out.getvalue() == b""
        assert (report.events, report.last_position) == (0, after)


async def test_export_of_an_empty_log(db: asyncpg.Connection[Any]) -> None:
    assert await export_bytes(db) == b""


# --- round trip ------------------------------------------------------------------------------


async def test_round_trip_into_a_fresh_database_reproduces_the_log_and_every_answer(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    target: asyncpg.Connection[Any],
    target_client: AsyncTestClient[Any],
) -> None:
    count = await populate(client)
    exported = await export_bytes(db)

    report, rejects = await run_import(target, exported)
    assert rejects == {}
    assert (report.new, report.duplicate, report.rejected) == (count, 0, 0)

    # the same events, digests, positions, user versions and chain: the export is byte-identical
    assert await export_bytes(target) == exported
    source_digests = await db.fetch("SELECT position, digest, body_digest, hash FROM events ORDER BY 1")
    assert await target.fetch("SELECT position, digest, body_digest, hash FROM events ORDER BY 1") == (
        source_digests
    )
    verified = await verify_log(target)
    assert verified.intact, verified
    assert (verified.events_checked, verified.last_position) == (count, count)

    users = await users_of(db)
    assert users == await users_of(target)
    assert {app for app, _ in users} == set(BOTH_APPS)
    for sdkappid, user in users:
        assert await answers(target_client, sdkappid, user) == await answers(client, sdkappid, user), user


async def test_import_in_two_parts_with_after(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    count = await populate(client, generated=40)
    whole = await export_bytes(db)
    first = b"".join(whole.splitlines(keepends=True)[:20])
    report, _ = await run_import(target, first)
    assert (report.new, report.duplicate, report.rejected) == (20, 0, 0)
    after = (await target.fetchrow("SELECT position FROM log_head"))["position"]
    report, _ = await run_import(target, await export_bytes(db, after=after))
    assert (report.new, report.duplicate, report.rejected) == (count - 20, 0, 0)
    assert await export_bytes(target) == whole
    assert (await verify_log(target)).intact


async def test_reimport_adds_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    count = await populate(client, generated=40)
    exported = await export_bytes(db)

    # into the database it came from
    before = await snapshot(db)
    report, rejects = await run_import(db, exported)
    assert (report.new, report.duplicate, report.rejected, rejects) == (0, count, 0, {})
    assert await snapshot(db) == before

    # twice into a fresh one
    await run_import(target, exported)
    after_first = await snapshot(target)
    report, _ = await run_import(target, exported, batch_size=1000)
    assert (report.new, report.duplicate, report.rejected) == (0, count, 0)
    assert await snapshot(target) == after_first
    assert await export_bytes(target) == exported


async def test_a_file_repeating_itself_imports_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    count = await populate(client, generated=10)
    exported = await export_bytes(db)
    report, _ = await run_import(target, exported + exported, batch_size=4)
    assert (report.new, report.duplicate, report.rejected) == (count, count, 0)
    assert await export_bytes(target) == exported


@pytest.mark.parametrize("dry_run", [False, True], ids=["import", "dry-run"])
async def test_the_same_event_twice_in_one_batch(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    target: asyncpg.Connection[Any],
    dry_run: bool,
) -> None:
    await populate(client, generated=0)
    lines = (await export_bytes(db)).splitlines(keepends=True)
    data = lines[0] + lines[1] + lines[0] + lines[1] + lines[1]
    report, rejects = await run_import(target, data, dry_run=dry_run, batch_size=1000)
    assert (report.new, report.duplicate, report.rejected, rejects) == (2, 3, 0, {})
    assert await export_bytes(target) == (b"" if dry_run else lines[0] + lines[1])


# --- dry run ---------------------------------------------------------------------------------


async def test_dry_run_counts_like_the_import_and_writes_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    count = await populate(client, generated=40)
    exported = await export_bytes(db)
    lines = exported.splitlines(keepends=True)
    # half of it already there, the whole file twice (duplicates across batches), one bad line
    await run_import(target, b"".join(lines[: count // 2]))
    data = exported + b"not json\n" + exported
    before = await snapshot(target)

    dry, dry_rejects = await run_import(target, data, dry_run=True, batch_size=4)
    assert (dry.new, dry.duplicate, dry.rejected) == (count - count // 2, count + count // 2, 1)
    assert list(dry_rejects) == [count + 1]
    assert await snapshot(target) == before
    assert await target.fetchval("SELECT to_regclass('pg_temp.profile_audit_import_seen')") is None

    real, real_rejects = await run_import(target, data, batch_size=4)
    assert (real.new, real.duplicate, real.rejected) == (dry.new, dry.duplicate, dry.rejected)
    assert real_rejects == dry_rejects
    assert await export_bytes(target) == exported


async def test_dry_run_on_an_empty_database(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    count = await populate(client, generated=10)
    before = await snapshot(target)
    report, _ = await run_import(target, await export_bytes(db), dry_run=True)
    assert (report.new, report.duplicate, report.rejected) == (count, 0, 0)
    assert await snapshot(target) == before
    assert before["events"] == 0


# --- bad lines -------------------------------------------------------------------------------


def _record(event: dict[str, Any], **changes: Any) -> bytes:
    record = {**event, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not _DROP}, ensure_ascii=False).encode()


_DROP = object()


async def test_bad_lines_are_rejected_with_their_line_numbers(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    await populate(client, generated=0)
    good = (await export_bytes(db)).splitlines()
    base = json.loads(good[0])  # doc-sample: a portrait set of id1 in SDKAPPID
    forged = {**base["payload"], "ProfileItem": [{"Tag": "Tag_Profile_IM_Nick", "Value": "forged"}]}
    other_user = {**base["payload"], "From_Account": "someone-else"}
    bad: list[tuple[bytes, str]] = [
        (b"not json", "not JSON"),
        (b'{"position": 1, "payload": {', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2, 3]", "not an export record"),
        (b'"a string"', "not an export record"),
        (_record(base, payload=_DROP), "not an export record"),
        (_record(base, metadata={"SdkAppid": 1400000000}), "not an export record"),
        (_record(base, received_at="2024-01-01T00:00:00"), "not an export record"),  # no time zone
        (_record(base, received_at="yesterday"), "not an export record"),
        (_record(base, metadata={**base["metadata"], "SdkAppid": "1400000099"}), "not configured"),
        (_record(base, metadata={k: v for k, v in base["metadata"].items() if k != "SdkAppid"}), "missing"),
        (_record(base, sdkappid=OTHER_SDKAPPID), "differs from the metadata's SdkAppid"),
        (_record(base, payload=[1, 2]), "not a JSON object"),
        (
            _record(base, payload={**base["payload"], "From_Account": ""}),
            "invalid Profile.CallbackPortraitSet",
        ),
        (_record(base, payload={**base["payload"], "EventTime": -1}), "invalid Profile.CallbackPortraitSet"),
        (_record(base, payload={"EventTime": 1}, metadata={"SdkAppid": str(SDKAPPID)}), "CallbackCommand"),
        (_record(base, payload={**base["payload"], "X": "nul \u0000"}), "U+0000"),
        (_record(base, payload=other_user, digest=_DROP), "user_id"),
        (_record(base, payload=forged), "digest"),
        (_record(base, command="State.StateChange"), "command"),
        (_record(base, event_time=1), "event_time"),
        (_record(base, received_at="2020-01-01T00:00:00Z"), "digest"),
        (_record(base, metadata={**base["metadata"], "peer": "10.9.9.9"}), "digest"),
        (_record(base, payload={**base["payload"], "Pad": "x" * 2000}), "larger than 1024 bytes"),
    ]
    lines = [good[0]]
    expected: dict[int, str] = {}
    for line, reason in bad:
        lines.append(line)
        expected[len(lines)] = reason
        lines.append(b"   ")  # blank lines are skipped, but counted in the numbering
    lines.extend(good[1:])

    report, rejects = await run_import(target, [line + b"\n" for line in lines], max_body_bytes=1024)
    assert (report.new, report.duplicate, report.rejected) == (len(good), 0, len(bad))
    assert sorted(rejects) == sorted(expected)
    for number, reason in expected.items():
        assert reason in rejects[number], (number, rejects[number])
        assert "\n" not in rejects[number]
    assert await export_bytes(target) == b"\n".join(good) + b"\n"
    assert await count_rows(target, "rejected_deliveries") == 0


async def test_events_of_an_app_not_configured_here_are_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], target: asyncpg.Connection[Any]
) -> None:
    await populate(client, generated=60)
    exported = await export_bytes(db)
    other = [i for i, line in enumerate(exported.splitlines(), 1) if json.loads(line)["sdkappid"] != SDKAPPID]
    assert other
    report, rejects = await run_import(target, exported, sdkappids=(SDKAPPID,))
    assert sorted(rejects) == other
    assert all(f"SdkAppid {OTHER_SDKAPPID} is not configured here" in r for r in rejects.values())
    assert report.rejected == len(other)
    assert report.new == await count_rows(target, "events") == len(exported.splitlines()) - len(other)
    assert (await verify_log(target)).intact


def test_a_hand_made_record_needs_only_the_delivery() -> None:
    """Without the derived fields, a record is just a delivery with the time it was received."""
    line = json.dumps(
        {
            "sdkappid": SDKAPPID,
            "received_at": "2024-05-01T08:00:00.123456+08:00",
            "metadata": portrait_query(Sign="ignored"),
            "payload": portrait_body("hand", 5),
        }
    ).encode()
    event = parse_line(line, sdkappids=BOTH_APPS, max_body_bytes=MAX_BODY)
    assert (event.sdkappid, event.command, event.user_id, event.event_time) == (
        SDKAPPID,
        "Profile.CallbackPortraitSet",
        "hand",
        5,
    )
    assert "Sign" not in event.metadata and "peer" not in event.metadata
    assert event.received_at.isoformat() == "2024-05-01T08:00:00.123456+08:00"


@pytest.mark.parametrize("dry_run", [False, True], ids=["import", "dry-run"])
async def test_an_event_the_database_refuses_does_not_fail_its_batch(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    target: asyncpg.Connection[Any],
    dry_run: bool,
) -> None:
    count = await populate(client, generated=0)
    lines = (await export_bytes(db)).splitlines(keepends=True)
    refused = [i for i, line in enumerate(lines, 1) if json.loads(line)["user_id"] == "alice"]
    assert len(refused) == 3
    # a constraint of this database only, standing in for any data error (SQLSTATE class 22/23)
    await target.execute("ALTER TABLE events ADD CONSTRAINT test_no_alice CHECK (user_id <> 'alice')")
    before = await snapshot(target)
    report, rejects = await run_import(target, lines, dry_run=dry_run, batch_size=1000)
    assert (report.new, report.duplicate, report.rejected) == (count - 3, 0, 3)
    assert sorted(rejects) == refused
    assert all("refused by the database: CheckViolationError" in r for r in rejects.values())
    if dry_run:
        assert await snapshot(target) == before
    else:
        assert await count_rows(target, "events") == count - 3
        assert (await verify_log(target)).intact
