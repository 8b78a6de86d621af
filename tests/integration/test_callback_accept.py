"""POST /callback accepts every well-formed delivery, records it once, and answers exactly OK."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.ingest import expected_sign
from tests.conftest import (
    AUTH,
    NICKNAME_500_BYTES,
    OK_REPLY,
    OTHER_SDKAPPID,
    SDKAPPID,
    count_rows,
    fixture_deliveries,
    make_settings,
    portrait_body,
    portrait_query,
)

OK_BYTES = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'


async def post(client: AsyncTestClient[Any], query: dict[str, str], body: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return await client.post(
        "/callback", params=query, content=content, headers={"Content-Type": "application/json"}
    )


async def all_events(client: AsyncTestClient[Any]) -> list[dict[str, Any]]:
    reply = await client.get("/events", params={"limit": 1000}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    events: list[dict[str, Any]] = reply.json()["events"]
    return events


async def test_every_fixture_is_accepted_and_stored_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    deliveries = fixture_deliveries()
    for delivery in deliveries:
        reply = await post(client, delivery["query"], delivery["body"])
        assert reply.status_code == 200, reply.text
        assert reply.content == OK_BYTES
        assert reply.json() == OK_REPLY
        assert reply.headers["content-type"].startswith("application/json")

    events = await all_events(client)
    assert [e["position"] for e in events] == list(range(1, len(deliveries) + 1))
    for delivery, event in zip(deliveries, events, strict=True):
        assert event["payload"] == delivery["body"], delivery["name"]
        assert event["command"] == delivery["body"]["CallbackCommand"]
        assert event["sdkappid"] == SDKAPPID
        assert event["event_time"] == delivery["body"]["EventTime"]
        expected_metadata = dict(delivery["query"])
        assert {k: v for k, v in event["metadata"].items() if k != "peer"} == expected_metadata
        is_portrait = delivery["body"]["CallbackCommand"] == "Profile.CallbackPortraitSet"
        assert event["user_id"] == (delivery["body"]["From_Account"] if is_portrait else None)

    assert await count_rows(db, "events") == len(deliveries)
    assert await count_rows(db, "rejected_deliveries") == 0
    stored = await db.fetch("SELECT body, metadata::text AS metadata FROM events ORDER BY position")
    for delivery, row in zip(deliveries, stored, strict=True):
        assert json.loads(row["body"]) == delivery["body"]
        assert json.loads(row["metadata"])["ClientIP"] == delivery["query"]["ClientIP"]

    # Every fixture delivered again: all OK, nothing new.
    for delivery in deliveries:
        reply = await post(client, delivery["query"], delivery["body"])
        assert reply.content == OK_BYTES
    assert await count_rows(db, "events") == len(deliveries)


async def test_redelivery_with_reordered_keys_and_whitespace_is_stored_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    body = portrait_body("dup", Tag_Profile_IM_Nick="Dup", Tag_Profile_IM_Level=3)
    first = json.dumps(body).encode()
    reordered = {key: body[key] for key in reversed(list(body))}
    reordered["ProfileItem"] = [dict(reversed(list(item.items()))) for item in body["ProfileItem"]]
    second = json.dumps(reordered, indent=4).encode()
    third = b"\r\n\t " + json.dumps(body, separators=(" , ", " : ")).encode() + b"\n\n"
    assert len({first, second, third}) == 3

    for raw in (first, second, third, first):
        reply = await post(client, portrait_query(), raw)
        assert reply.content == OK_BYTES

    assert await count_rows(db, "events") == 1
    row = await db.fetchrow("SELECT position, body FROM events")
    assert row is not None and row["position"] == 1
    assert json.loads(row["body"]) == body
    head = await db.fetchrow("SELECT position FROM log_head")
    assert head is not None and head["position"] == 1


async def test_same_body_for_two_apps_is_two_events(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    body = portrait_body("shared")
    for app in (SDKAPPID, OTHER_SDKAPPID, SDKAPPID, OTHER_SDKAPPID):
        assert (await post(client, portrait_query(app), body)).content == OK_BYTES
    rows = await db.fetch("SELECT sdkappid FROM events ORDER BY position")
    assert [r["sdkappid"] for r in rows] == [SDKAPPID, OTHER_SDKAPPID]


async def test_different_query_same_body_is_a_duplicate(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    """Idempotency is over (SDKAppID, JSON body): a retry from another IM node is still one event."""
    body = portrait_body("retry")
    assert (await post(client, portrait_query(ClientIP="10.0.0.1"), body)).content == OK_BYTES
    assert (await post(client, portrait_query(ClientIP="10.0.0.2"), body)).content == OK_BYTES
    assert await count_rows(db, "events") == 1


@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("State.StateChange", {"EventTime": 1700000400000, "Info": {"Action": "Logout", "To_Account": "a"}}),
        (
            "C2C.CallbackBeforeSendMsg",
            {"From_Account": "alice", "To_Account": "bob", "MsgBody": [{"MsgType": "TIMTextElem"}]},
        ),
        ("C2C.CallbackAfterSendMsg", {"From_Account": "alice", "To_Account": "bob", "EventTime": 5}),
        ("Sns.CallbackFriendAdd", {"PairList": [{"From_Account": "a", "To_Account": "b"}]}),
        ("Group.CallbackAfterCreateGroup", {"GroupId": "@TGS#1", "EventTime": "1700000000000"}),
        ("Some.CommandNobodyKnowsYet", {"Anything": [1, 2.5, None, True, {"x": "y"}]}),
    ],
)
async def test_every_callback_command_is_recorded_without_user(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], command: str, body: dict[str, Any]
) -> None:
    full_body = {"CallbackCommand": command, **body}
    reply = await post(client, portrait_query(CallbackCommand=command, OptPlatform="IOS"), full_body)
    assert reply.content == OK_BYTES, reply.text
    row = await db.fetchrow("SELECT command, user_id, user_version, body FROM events")
    assert row is not None
    assert row["command"] == command
    assert row["user_id"] is None
    assert row["user_version"] is None
    assert json.loads(row["body"]) == full_body


async def test_empty_profile_item_is_recorded(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    body = portrait_body("nobody")
    body["ProfileItem"] = []
    assert (await post(client, portrait_query(), body)).content == OK_BYTES
    row = await db.fetchrow("SELECT user_id, body FROM events")
    assert row is not None and row["user_id"] == "nobody"
    assert json.loads(row["body"])["ProfileItem"] == []


async def test_500_byte_multibyte_nickname_round_trips_byte_for_byte(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    body = portrait_body("nick", Tag_Profile_IM_Nick=NICKNAME_500_BYTES)
    for ascii_escaped in (False, True):  # raw UTF-8 and \uXXXX escapes are the same content
        raw = json.dumps(body, ensure_ascii=ascii_escaped).encode()
        assert (await post(client, portrait_query(), raw)).content == OK_BYTES
    assert await count_rows(db, "events") == 1

    stored = await db.fetchval("SELECT body FROM events")
    assert NICKNAME_500_BYTES.encode() in stored.encode()

    reply = await client.get("/events", headers=AUTH)
    assert NICKNAME_500_BYTES.encode("utf-8") in reply.content, "served as raw UTF-8, unaltered"
    value = reply.json()["events"][0]["payload"]["ProfileItem"][0]["Value"]
    assert value == NICKNAME_500_BYTES
    assert value.encode() == NICKNAME_500_BYTES.encode()
    assert len(value.encode()) == 500


async def test_metadata_keeps_ipv6_unknown_platform_and_not_sign(
    database_url: str, db: asyncpg.Connection[Any]
) -> None:
    app = create_app(make_settings(database_url, callback_token="tok"))
    request_time = str(int(time.time()))
    query = portrait_query(
        ClientIP="2001:db8::1",
        OptPlatform="HarmonyOS",
        RequestTime=request_time,
        Sign=expected_sign("tok", request_time),
    )
    async with AsyncTestClient(app=app) as signed_client:
        assert (await post(signed_client, query, portrait_body())).content == OK_BYTES
    metadata = json.loads(await db.fetchval("SELECT metadata::text FROM events"))
    assert metadata["ClientIP"] == "2001:db8::1"
    assert metadata["OptPlatform"] == "HarmonyOS"
    assert metadata["RequestTime"] == request_time
    assert "Sign" not in metadata


async def test_positions_and_chain_follow_commit_order(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    for i in range(5):
        assert (await post(client, portrait_query(), portrait_body(f"user{i}", 1000 + i))).content == OK_BYTES
    rows = await db.fetch("SELECT position, user_id, user_version FROM events ORDER BY position")
    assert [r["position"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["user_id"] for r in rows] == [f"user{i}" for i in range(5)]
    assert all(r["user_version"] == 1 for r in rows)
    head = await db.fetchrow("SELECT position, hash FROM log_head")
    last_hash = await db.fetchval("SELECT hash FROM events WHERE position = 5")
    assert head is not None and head["position"] == 5 and head["hash"] == last_hash
