"""The read API, `GET /users/{user_id}/profile` and `/profile-history`, against the contract."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from asyncpg.connection import LoggedQuery
from litestar.testing import AsyncTestClient

from app.api import users
from app.app import create_app
from app.database import pooled_connection
from tests.conftest import (
    API_TOKEN,
    AUTH,
    OTHER_SDKAPPID,
    SDKAPPID,
    LiveServer,
    fixture_deliveries,
    make_settings,
)
from tests.profile_helpers import (
    Delivery,
    actual_answer,
    append,
    expected_answer,
    fold_from_log,
    fold_users,
    full_history,
    get_json,
    post_delivery,
    random_deliveries,
    user_path,
)

NICK = "Tag_Profile_IM_Nick"
LEVEL = "Tag_Profile_IM_Level"
T0 = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
INT64_MAX = 2**63 - 1
LAST_RENDERABLE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: `at` is echoed as ISO 8601


def iso(epoch_ms: int, offset: str = "Z") -> str:
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=UTC).replace(microsecond=epoch_ms % 1000 * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", offset)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- authentication ---------------------------------------------------------------------------


async def test_read_endpoints_answer_401_without_a_valid_bearer_token(client: AsyncTestClient[Any]) -> None:
    await post_delivery(client, Delivery("alice", T0, [(NICK, "a")]))
    sdk = {"sdkappid": SDKAPPID}
    # (path, query, the status with a valid token); the query goes in params, which httpx puts
    # in place of any query in the path.
    answers = [
        (user_path("alice"), sdk, 200),
        (user_path("alice"), {**sdk, "at": str(T0)}, 200),
        (user_path("alice", "profile-history"), sdk, 200),
        (user_path("nobody"), sdk, 404),  # no 404 before authentication: existence does not leak
        (user_path("nobody", "profile-history"), sdk, 404),
        (user_path("alice"), {**sdk, "at": "yesterday"}, 400),  # nor a 400 for a bad parameter
        (user_path("alice", "profile-history"), {**sdk, "limit": "0"}, 400),
    ]
    for path, query, answer in answers:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Bearer {API_TOKEN}x"},
            {"Authorization": f"Basic {API_TOKEN}"},
            {"Authorization": "Bearer "},
            {"Authorization": API_TOKEN},
        ):
            reply = await client.get(path, params=query, headers=headers)
            assert reply.status_code == 401, (path, query, headers, reply.text)
            assert "token" in reply.json()["detail"]
        reply = await client.get(path, params=query, headers=AUTH)
        assert reply.status_code == answer, (path, query, reply.text)


# --- ?at= -------------------------------------------------------------------------------------


async def test_at_takes_iso_8601_with_z_offset_or_naive_utc_and_epoch_milliseconds(
    client: AsyncTestClient[Any],
) -> None:
    t1, t2 = T0, T0 + 60_000
    await post_delivery(client, Delivery("u", t1, [(NICK, "first"), (LEVEL, 1)]))
    await post_delivery(client, Delivery("u", t2, [(NICK, "second")]))

    async def nick_at(at: str | int) -> tuple[int, Any]:
        status, body = await get_json(client, user_path("u"), {"sdkappid": SDKAPPID, "at": at})
        return status, body

    cases: list[tuple[str | int, str | None]] = [
        (t1, "first"),  # epoch ms, inclusive
        (str(t1), "first"),
        (t1 - 1, None),  # before the first change: 404
        (t2 - 1, "first"),
        (t2, "second"),
        (iso(t1), "first"),  # 2023-11-14T22:13:20.123Z
        (iso(t1 - 1), None),
        (iso(t1, "+00:00"), "first"),
        ("2023-11-15T06:13:20.123+08:00", "first"),  # the same instant as t1
        ("2023-11-15T06:13:20.122+08:00", None),
        ("2023-11-14T17:14:20.123-05:00", "second"),  # t2
        ("2023-11-14T22:13:20.123", "first"),  # naive: UTC
        ("2023-11-14T22:13:20.122", None),
        ("2023-11-14T22:14:20", "first"),  # naive, whole seconds: 123 ms before t2
        ("2023-11-14T22:14:20.123", "second"),
        ("2023-11-14T22:13:20.123999Z", "first"),  # sub-millisecond digits do not round up
        ("2024-01-01", "second"),  # a date alone: midnight UTC
        (f" {t2} ", "second"),
    ]
    for at, nick in cases:
        status, body = await nick_at(at)
        if nick is None:
            assert status == 404, (at, body)
            assert "no profile" in body["detail"], body
        else:
            assert status == 200, (at, body)
            assert body["profile"][NICK] == nick, (at, body)
            assert body["profile"][LEVEL] == 1, "a tag not changed later keeps its value"
            assert body["version"] == (1 if nick == "first" else 2), (at, body)
            assert body["updated_at"] == iso(t1 if nick == "first" else t2)
            assert body["at"] is not None and body["at"].endswith("Z")

    status, body = await nick_at(iso(t1, "+00:00"))
    assert body["at"] == iso(t1)
    status, now = await get_json(client, user_path("u"), {"sdkappid": SDKAPPID})
    assert status == 200 and now["at"] is None and now["profile"] == {NICK: "second", LEVEL: 1}
    assert set(now) >= {"user_id", "profile", "version", "updated_at"}
    assert now["user_id"] == "u" and now["version"] == 2 and now["updated_at"] == iso(t2)


async def test_at_as_iso_of_an_exact_event_time_includes_that_event(client: AsyncTestClient[Any]) -> None:
    """Regression: `at` was computed as int(timestamp() * 1000), 1 ms early for some instants."""
    # 1970-01-02T12:32:50.800Z, 1970-01-13T09:45:03.197Z, 2038-08-07T18:40:42.924Z, and T0.
    for event_time in (131_570_800, 1_071_903_197, 2_164_819_242_924, T0):
        user = f"exact-{event_time}"
        await post_delivery(client, Delivery(user, event_time, [(NICK, "then")]))
        for at in (iso(event_time), iso(event_time, "+00:00"), iso(event_time).rstrip("Z"), str(event_time)):
            status, body = await get_json(client, user_path(user), {"sdkappid": SDKAPPID, "at": at})
            assert status == 200, (at, body)
            assert body["profile"] == {NICK: "then"}
            _, entries = await full_history(client, SDKAPPID, user, since=at, until=at)
            assert [e["event_time"] for e in entries] == [event_time], at


# --- 404 and 400 ------------------------------------------------------------------------------


async def test_unknown_users_are_404_on_both_endpoints(client: AsyncTestClient[Any]) -> None:
    await post_delivery(client, Delivery("known", T0, [(NICK, "k")]))
    for sdkappid, user in [(SDKAPPID, "nobody"), (OTHER_SDKAPPID, "known"), (SDKAPPID, "Known")]:
        for endpoint in ("profile", "profile-history"):
            status, body = await get_json(client, user_path(user, endpoint), {"sdkappid": sdkappid})
            assert status == 404, (sdkappid, user, endpoint, body)
            assert repr(user) in body["detail"]
    status, body = await get_json(client, user_path("known"), {"sdkappid": SDKAPPID, "at": T0 - 1})
    assert status == 404 and "no profile" in body["detail"]
    # A known user whose filters match nothing is an empty page, not a 404.
    status, body = await get_json(
        client, user_path("known", "profile-history"), {"sdkappid": SDKAPPID, "tag": "Tag_None"}
    )
    assert status == 200 and body["entries"] == [] and body["next_cursor"] is None


BAD_PARAMETERS = [
    ("profile", {"at": "yesterday"}, "at"),
    ("profile", {"at": "2023-13-45T00:00:00Z"}, "at"),
    ("profile", {"at": "1e3"}, "at"),
    ("profile", {"at": "--5"}, "at"),
    ("profile", {"at": "12:30"}, "at"),
    ("profile", {"at": "99999999999999999999"}, "at"),  # beyond int64: was a 500
    ("profile", {"at": "9" * 5000}, "at"),  # was a 500 (int() refuses it)
    ("profile-history", {"since": "last week"}, "since"),
    ("profile-history", {"until": "2023-11-14T25:00:00Z"}, "until"),
    ("profile-history", {"since": "-99999999999999999999"}, "since"),  # was a 500
    ("profile-history", {"until": "99999999999999999999"}, "until"),  # was a 500
    ("profile-history", {"cursor": "!!!"}, "cursor"),
    ("profile-history", {"cursor": b64("not a cursor")}, "cursor"),
    ("profile-history", {"cursor": b64("1:2:3")}, "cursor"),
    ("profile-history", {"cursor": b64("a:b")}, "cursor"),
    ("profile-history", {"cursor": b64("99999999999999999999:1")}, "cursor"),  # was a 500
    ("profile-history", {"cursor": b64("1700000000000:-1")}, "cursor"),
    ("profile-history", {"cursor": "////"}, "cursor"),
    ("profile-history", {"limit": "0"}, "limit"),
    ("profile-history", {"limit": "-1"}, "limit"),
    ("profile-history", {"limit": "501"}, "limit"),
    ("profile-history", {"limit": "ten"}, "limit"),
    ("profile-history", {"limit": "1.5"}, "limit"),
    ("profile", {"sdkappid": "1"}, "sdkappid"),  # not configured
    ("profile-history", {"sdkappid": "1"}, "sdkappid"),
    ("profile", {"sdkappid": "abc"}, "sdkappid"),
    ("profile", {"sdkappid": None}, "sdkappid"),  # two apps configured: required
    ("profile-history", {"sdkappid": None}, "sdkappid"),
    ("profile-history", {"tag": "a\x00b"}, "tag"),  # PostgreSQL text cannot hold U+0000 (was 503)
    ("profile-history", {"operator": "\x00"}, "operator"),
]


async def test_bad_parameters_are_400_naming_the_parameter(client: AsyncTestClient[Any]) -> None:
    await post_delivery(client, Delivery("alice", T0, [(NICK, "a")]))
    for endpoint, params, name in BAD_PARAMETERS:
        query = {k: v for k, v in {"sdkappid": SDKAPPID, **params}.items() if v is not None}
        for user in ("alice", "nobody"):  # checked whether or not the user exists
            status, body = await get_json(client, user_path(user, endpoint), query)
            assert status == 400, (endpoint, user, query, body)
            assert name in json.dumps(body), body  # says which parameter is wrong
            assert body["detail"], body


async def test_a_user_id_with_nul_is_400(client: AsyncTestClient[Any]) -> None:
    for endpoint in ("profile", "profile-history"):
        status, body = await get_json(client, user_path("a\x00b", endpoint), {"sdkappid": SDKAPPID})
        assert status == 400 and "user_id" in body["detail"], (endpoint, body)


async def test_sdkappid_may_be_omitted_when_one_app_is_configured(database_url: str) -> None:
    app = create_app(make_settings(database_url, sdkappids=(SDKAPPID,)))
    async with AsyncTestClient(app=app) as client:
        await post_delivery(client, Delivery("solo", T0, [(NICK, "s")]))
        for params in ({}, {"sdkappid": SDKAPPID}):
            status, body = await get_json(client, user_path("solo"), params)
            assert status == 200 and body["profile"] == {NICK: "s"}, body
            assert body["sdkappid"] == SDKAPPID
            status, body = await get_json(client, user_path("solo", "profile-history"), params)
            assert status == 200 and len(body["entries"]) == 1, body
        status, body = await get_json(client, user_path("solo"), {"sdkappid": OTHER_SDKAPPID})
        assert status == 400 and "sdkappid" in body["detail"]


# --- history ----------------------------------------------------------------------------------


async def test_history_is_newest_first_ties_by_position_with_every_field(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    sent = [
        Delivery("h", T0 + 5000, [(NICK, "n1"), (LEVEL, 1)], platform="iOS", client_ip="203.0.113.7"),
        Delivery(
            "h", T0 + 1000, [(NICK, "n2")], operator="administrator", platform="RESTAPI", client_ip="10.0.0.2"
        ),
        Delivery("h", T0 + 5000, [(NICK, "n3")], platform="Android", client_ip="2001:db8::1"),
        Delivery("h", T0 + 3000, [(LEVEL, 2)], platform="Web", client_ip="198.51.100.4"),
        Delivery(
            "h", T0 + 5000, [(LEVEL, 3), ("Tag_Profile_Custom_X", "x")], platform="Mac", client_ip="::1"
        ),
    ]
    for delivery in sent:
        await post_delivery(client, delivery)
    _, entries = await full_history(client, SDKAPPID, "h")
    positions = [e["position"] for e in entries]
    # Positions follow arrival: 1..5. Newest EventTime first; among the three at T0+5000, the later position first.
    assert positions == [5, 3, 1, 4, 2]
    assert [e["event_time"] for e in entries] == [T0 + 5000] * 3 + [T0 + 3000, T0 + 1000]
    for entry in entries:
        delivery = sent[entry["position"] - 1]
        assert set(entry) >= {
            "position",
            "event_time",
            "received_at",
            "operator_account",
            "opt_platform",
            "client_ip",
            "changes",
        }
        assert entry["operator_account"] == (delivery.operator or "h")
        assert entry["opt_platform"] == delivery.platform
        assert entry["client_ip"] == delivery.client_ip
        received = datetime.fromisoformat(entry["received_at"].replace("Z", "+00:00"))
        stored = await db.fetchval("SELECT received_at FROM events WHERE position = $1", entry["position"])
        assert received == stored, "received_at is the time the delivery was recorded, with its zone"
        assert all(set(c) == {"tag", "old", "new"} for c in entry["changes"])
    # old/new chained in (EventTime, position) order: 2(n2) < 4 < 1(n1) < 3(n3) < 5.
    changes = {e["position"]: {c["tag"]: (c["old"], c["new"]) for c in e["changes"]} for e in entries}
    assert changes == {
        2: {NICK: (None, "n2")},
        4: {LEVEL: (None, 2)},
        1: {NICK: ("n2", "n1"), LEVEL: (2, 1)},
        3: {NICK: ("n1", "n3")},
        5: {LEVEL: (1, 3), "Tag_Profile_Custom_X": (None, "x")},
    }
    status, profile = await get_json(client, user_path("h"), {"sdkappid": SDKAPPID})
    assert status == 200
    assert profile["profile"] == {NICK: "n3", LEVEL: 3, "Tag_Profile_Custom_X": "x"}


async def test_history_filters_tag_since_until_inclusive_and_operator(client: AsyncTestClient[Any]) -> None:
    sent = [
        Delivery("f", T0 + i * 1000, [(NICK, f"n{i}")] + ([(LEVEL, i)] if i % 2 else []), operator=op)
        for i, op in enumerate(["f", "administrator", "f", "f", "administrator", "f", "f", "administrator"])
    ]
    for delivery in sent:
        await post_delivery(client, delivery)

    async def times(page_size: int = 500, **filters: Any) -> list[int]:
        _, entries = await full_history(client, SDKAPPID, "f", page_size=page_size, **filters)
        if "tag" in filters:
            assert all([c["tag"] for c in e["changes"]] == [filters["tag"]] for e in entries)
        return [(e["event_time"] - T0) // 1000 for e in entries]

    assert await times() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert await times(tag=LEVEL) == [7, 5, 3, 1]
    assert await times(tag=LEVEL, page_size=1) == [7, 5, 3, 1]
    assert await times(tag=NICK) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert await times(since=T0 + 2000) == [7, 6, 5, 4, 3, 2]
    assert await times(until=T0 + 2000) == [2, 1, 0]
    assert await times(since=T0 + 2000, until=T0 + 4000) == [4, 3, 2]
    assert await times(since=T0 + 2001, until=T0 + 3999) == [3]
    assert await times(since=iso(T0 + 2000), until=iso(T0 + 4000)) == [4, 3, 2]
    assert await times(since="2023-11-15T06:13:22.123+08:00", until=iso(T0 + 4000)) == [4, 3, 2]
    assert await times(since=T0 + 5000, until=T0 + 4000) == []
    assert await times(operator="administrator") == [7, 4, 1]
    assert await times(operator="administrator", page_size=1) == [7, 4, 1]
    assert await times(operator="f", tag=LEVEL, since=T0 + 2000) == [5, 3]
    assert await times(operator="nobody") == []
    assert await times(tag="Tag_Profile_IM_Gender") == []
    # The tag filter keeps old/new of that tag's own chain.
    _, entries = await full_history(client, SDKAPPID, "f", tag=LEVEL)
    assert [(c["old"], c["new"]) for e in entries for c in e["changes"]] == [
        (5, 7),
        (3, 5),
        (1, 3),
        (None, 1),
    ]


async def test_limit_defaults_to_50_and_is_at_most_500(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    await append(db, [Delivery("many", T0 + i, [(LEVEL, i)]) for i in range(130)])
    status, page = await get_json(client, user_path("many", "profile-history"), {"sdkappid": SDKAPPID})
    assert status == 200 and len(page["entries"]) == 50 and page["next_cursor"]
    for limit, size, more in [(500, 130, False), (130, 130, False), (129, 129, True), (1, 1, True)]:
        status, page = await get_json(
            client, user_path("many", "profile-history"), {"sdkappid": SDKAPPID, "limit": limit}
        )
        assert status == 200 and len(page["entries"]) == size, limit
        assert (page["next_cursor"] is not None) == more, limit


async def test_keyset_pagination_visits_every_entry_exactly_once_in_order(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    rng = random.Random(7)
    # 140 changes over 25 distinct EventTimes: long runs of ties that pages must split correctly.
    deliveries = [
        Delivery("pager", T0 + rng.randint(0, 24) * 1000, [(NICK, f"n{i}")] + ([(LEVEL, i)] if i % 3 else []))
        for i in range(140)
    ]
    await append(db, deliveries)
    expected = [
        (row["event_time"], row["position"])
        for row in await db.fetch(
            "SELECT event_time, position FROM events WHERE user_id = 'pager'"
            " ORDER BY event_time DESC, position DESC"
        )
    ]
    assert len(expected) == 140
    for page_size in (1, 2, 7, 13, 50, 139, 140, 500):
        pages, entries = await full_history(client, SDKAPPID, "pager", page_size=page_size)
        assert [(e["event_time"], e["position"]) for e in entries] == expected, page_size
        assert len(pages) == max(1, -(-140 // page_size)), page_size

    # Keyset, not offset: a change arriving mid-walk (newer than everything) neither repeats
    # nor hides an entry of the pages still to come.
    status, first = await get_json(
        client, user_path("pager", "profile-history"), {"sdkappid": SDKAPPID, "limit": 10}
    )
    await post_delivery(client, Delivery("pager", T0 + 10**6, [(NICK, "newest")]))
    rest = []
    cursor = first["next_cursor"]
    while cursor:
        status, page = await get_json(
            client,
            user_path("pager", "profile-history"),
            {"sdkappid": SDKAPPID, "limit": 10, "cursor": cursor},
        )
        assert status == 200, page
        rest += page["entries"]
        cursor = page["next_cursor"]
    walked = [(e["event_time"], e["position"]) for e in first["entries"] + rest]
    assert walked == expected


async def test_history_bounds_at_the_ends_of_int64_leave_nothing_out(client: AsyncTestClient[Any]) -> None:
    """`since`/`until` at the extremes and a cursor at the very top exclude no entry."""
    for index in range(3):
        await post_delivery(client, Delivery("edge", T0 + index * 1000, [(NICK, f"n{index}")]))
    _, everything = await full_history(client, SDKAPPID, "edge")
    assert len(everything) == 3
    top = b64(f"{INT64_MAX}:{INT64_MAX}")
    for params in (
        {"since": -INT64_MAX, "until": INT64_MAX},
        {"since": str(-INT64_MAX)},
        {"until": INT64_MAX},
        {"cursor": top},
        {"cursor": top, "since": -INT64_MAX, "until": INT64_MAX},
    ):
        status, body = await get_json(
            client, user_path("edge", "profile-history"), {"sdkappid": SDKAPPID, **params}
        )
        assert status == 200 and body["entries"] == everything, params
    _, now = await get_json(client, user_path("edge"), {"sdkappid": SDKAPPID})
    status, at_end = await get_json(
        client, user_path("edge"), {"sdkappid": SDKAPPID, "at": LAST_RENDERABLE_MS}
    )
    assert status == 200, at_end
    assert (at_end["profile"], at_end["version"]) == (now["profile"], now["version"]) == ({NICK: "n2"}, 3)


async def test_each_read_is_one_statement(
    client: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freshness, the answer, the version and (for an empty page) existence come in one round trip."""
    statements: list[str] = []

    def log(record: LoggedQuery) -> None:
        statements.append(record.query)

    @asynccontextmanager
    async def logged(pool: asyncpg.Pool[Any]) -> AsyncIterator[asyncpg.Connection[Any]]:
        async with pooled_connection(pool) as connection:
            connection.add_query_logger(log)
            try:
                yield connection
            finally:
                connection.remove_query_logger(log)

    monkeypatch.setattr(users, "pooled_connection", logged)
    await post_delivery(client, Delivery("one", T0, [(NICK, "a")]))
    reads = [
        (user_path("one"), {}, 200),
        (user_path("one"), {"at": T0}, 200),
        (user_path("one"), {"at": T0 - 1}, 404),
        (user_path("nobody"), {}, 404),
        (user_path("one", "profile-history"), {}, 200),
        (user_path("one", "profile-history"), {"tag": "Tag_None"}, 200),
        (user_path("one", "profile-history"), {"cursor": b64(f"{T0}:1")}, 200),
        (user_path("nobody", "profile-history"), {}, 404),
    ]
    # A connection's first use of the array types costs asyncpg's type introspection: warm up.
    # Requests one at a time share the pool's one connection.
    for path, params, expected in reads:
        status, body = await get_json(client, path, {"sdkappid": SDKAPPID, **params})
        assert status == expected, (path, params, body)
    for path, params, _expected in reads:
        statements.clear()
        await get_json(client, path, {"sdkappid": SDKAPPID, **params})
        await asyncio.sleep(0)  # query loggers are called soon after the statement, not in it
        assert len(statements) == 1, (path, params, statements)


# --- identities and values --------------------------------------------------------------------

ODD_USER_IDS = [
    "a/b",
    "a b",
    "100%",
    "a%2Fb",  # a literal percent sequence: must not be decoded twice into "a/b"
    "a%20b",
    "a+b",
    "q?x=1",
    "h#frag",
    "..",
    ".",
    "a/../b",
    "trailing/",
    "/leading",
    "back\\slash",
    "用户名",
    "🌸 emoji 👩‍👩‍👧",
    "é\u0301",
    "semi;colon,comma&amp=eq",
    "'quote\"",
]


async def test_user_ids_with_any_characters_work_percent_encoded(client: AsyncTestClient[Any]) -> None:
    for index, user in enumerate(ODD_USER_IDS):
        await post_delivery(client, Delivery(user, T0 + index, [(NICK, user)]))
    for user in ODD_USER_IDS:
        status, body = await get_json(client, user_path(user), {"sdkappid": SDKAPPID})
        assert status == 200, (user, body)
        assert body["user_id"] == user and body["profile"] == {NICK: user}
        status, body = await get_json(client, user_path(user, "profile-history"), {"sdkappid": SDKAPPID})
        assert status == 200, (user, body)
        assert body["user_id"] == user
        assert [c["new"] for e in body["entries"] for c in e["changes"]] == [user]


@pytest.mark.e2e
async def test_user_ids_with_any_characters_work_over_a_real_server(
    live_server: LiveServer, database_url: str
) -> None:
    """The same through uvicorn (raw paths as a real client sends them); one app, so no sdkappid."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        for index, user in enumerate(ODD_USER_IDS):
            await post_delivery(http, Delivery(user, T0 + index, [(NICK, user)]))
        for user in ODD_USER_IDS:
            status, body = await get_json(http, user_path(user), {})
            assert status == 200, (user, body)
            assert body["user_id"] == user and body["profile"] == {NICK: user}
            status, body = await get_json(http, user_path(user, "profile-history"), {})
            assert status == 200 and body["user_id"] == user, (user, body)
            assert len(body["entries"]) == 1


async def test_the_same_user_id_in_two_apps_is_two_users(client: AsyncTestClient[Any]) -> None:
    await post_delivery(client, Delivery("alice", T0, [(NICK, "in A"), (LEVEL, 1)], sdkappid=SDKAPPID))
    await post_delivery(client, Delivery("alice", T0 + 1, [(NICK, "in B")], sdkappid=OTHER_SDKAPPID))
    await post_delivery(client, Delivery("alice", T0 + 2, [(NICK, "in B again")], sdkappid=OTHER_SDKAPPID))
    status, a = await get_json(client, user_path("alice"), {"sdkappid": SDKAPPID})
    status_b, b = await get_json(client, user_path("alice"), {"sdkappid": OTHER_SDKAPPID})
    assert (status, status_b) == (200, 200)
    assert (a["sdkappid"], a["profile"], a["version"]) == (SDKAPPID, {NICK: "in A", LEVEL: 1}, 1)
    assert (b["sdkappid"], b["profile"], b["version"]) == (OTHER_SDKAPPID, {NICK: "in B again"}, 2)
    _, history_a = await full_history(client, SDKAPPID, "alice")
    _, history_b = await full_history(client, OTHER_SDKAPPID, "alice")
    assert [e["position"] for e in history_a] == [1]
    assert [e["position"] for e in history_b] == [3, 2]
    assert history_b[1]["changes"] == [{"tag": NICK, "old": None, "new": "in B"}], "no old value from app A"
    status, _ = await get_json(client, user_path("alice"), {"sdkappid": SDKAPPID, "at": T0 + 5})
    assert status == 200
    status, _ = await get_json(client, user_path("alice"), {"sdkappid": OTHER_SDKAPPID, "at": T0})
    assert status == 404, "app B had no alice at T0 even though app A did"


async def test_values_keep_their_json_type(client: AsyncTestClient[Any]) -> None:
    first = [
        ("Tag_Profile_IM_Level", 7),
        ("Tag_Profile_IM_BirthDay", 4294967295),  # uint32 max
        ("Tag_Profile_IM_Role", 0),
        ("Tag_Profile_Custom_Str", "7"),
        ("Tag_Profile_Custom_Zeros", "007"),
        ("Tag_Profile_Custom_Big", "4294967295"),
        ("Tag_Profile_Custom_Empty", ""),
        ("Tag_Profile_Custom_True", "true"),
        ("Tag_Profile_Custom_Null", "null"),
        ("Tag_Profile_Custom_Float", "1.50"),
    ]
    await post_delivery(client, Delivery("typed", T0, first))
    await post_delivery(
        client, Delivery("typed", T0 + 1, [("Tag_Profile_IM_Level", "7"), ("Tag_Profile_Custom_Str", 7)])
    )
    reply = await client.get(user_path("typed"), params={"sdkappid": SDKAPPID}, headers=AUTH)
    profile = reply.json()["profile"]
    expected = dict(first) | {"Tag_Profile_IM_Level": "7", "Tag_Profile_Custom_Str": 7}
    assert profile == expected
    assert {k: type(v) for k, v in profile.items()} == {k: type(v) for k, v in expected.items()}
    assert '"Tag_Profile_Custom_Str":7' in reply.text and '"Tag_Profile_IM_Level":"7"' in reply.text
    assert '"Tag_Profile_IM_BirthDay":4294967295' in reply.text
    assert '"Tag_Profile_Custom_Float":"1.50"' in reply.text
    _, entries = await full_history(client, SDKAPPID, "typed")
    latest = {c["tag"]: (c["old"], c["new"]) for c in entries[0]["changes"]}
    assert latest == {"Tag_Profile_IM_Level": (7, "7"), "Tag_Profile_Custom_Str": ("7", 7)}
    assert [type(v) for v in latest["Tag_Profile_IM_Level"]] == [int, str]
    status, at = await get_json(client, user_path("typed"), {"sdkappid": SDKAPPID, "at": T0})
    assert status == 200
    assert at["profile"] == dict(first)
    assert {k: type(v) for k, v in at["profile"].items()} == {k: type(v) for k, v in first}


# --- the shared fixture deliveries ------------------------------------------------------------


async def test_fixture_deliveries_read_back_as_the_contract_says(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    by_name = {d["name"]: d for d in fixture_deliveries()}
    for delivery in fixture_deliveries():
        reply = await client.post("/callback", params=delivery["query"], json=delivery["body"])
        assert reply.status_code == 200, reply.text

    ios, admin, late = (
        by_name[n]["body"] for n in ("client-change-ios", "admin-change-via-rest", "late-older-delivery")
    )
    assert late["EventTime"] < ios["EventTime"] < admin["EventTime"], "the fixture's premise"

    status, alice = await get_json(client, user_path("alice"), {"sdkappid": SDKAPPID})
    assert status == 200
    # The late, older delivery did not overwrite the newer nick (the administrator's, "").
    assert alice["profile"][NICK] == "" != "Alice (old)"
    assert alice["profile"] == {
        NICK: "",
        "Tag_Profile_IM_Image": "https://cdn.example.com/a/alice.png",
        "Tag_Profile_IM_SelfSignature": "你好，世界",
        "Tag_Profile_IM_AdminForbidType": "AdminForbid_Type_SendOut",
    }
    assert alice["version"] == 3, "State.StateChange and C2C callbacks are not profile changes"
    status, before_admin = await get_json(
        client, user_path("alice"), {"sdkappid": SDKAPPID, "at": admin["EventTime"] - 1}
    )
    assert before_admin["profile"][NICK] == "Alice 🌸"
    status, oldest = await get_json(
        client, user_path("alice"), {"sdkappid": SDKAPPID, "at": late["EventTime"]}
    )
    assert oldest["profile"] == {NICK: "Alice (old)"} and oldest["version"] == 1

    _, history = await full_history(client, SDKAPPID, "alice")
    assert [e["event_time"] for e in history] == [admin["EventTime"], ios["EventTime"], late["EventTime"]]
    admin_entry, ios_entry, late_entry = history
    assert admin_entry["operator_account"] == "administrator"
    assert (admin_entry["opt_platform"], admin_entry["client_ip"]) == ("RESTAPI", "10.0.0.2")
    assert sorted(map(tuple, (c.values() for c in admin_entry["changes"]))) == [
        ("Tag_Profile_IM_AdminForbidType", None, "AdminForbid_Type_SendOut"),
        (NICK, "Alice 🌸", ""),
    ]
    assert {c["tag"]: c["old"] for c in ios_entry["changes"]}[NICK] == "Alice (old)"
    assert (ios_entry["opt_platform"], ios_entry["client_ip"]) == ("iOS", "203.0.113.7")
    assert late_entry["changes"] == [{"tag": NICK, "old": None, "new": "Alice (old)"}]
    assert late_entry["position"] > ios_entry["position"], "it arrived last, yet sorts by its EventTime"
    _, by_admin = await full_history(client, SDKAPPID, "alice", operator="administrator")
    assert [e["position"] for e in by_admin] == [admin_entry["position"]]

    _, bob = await get_json(client, user_path("bob"), {"sdkappid": SDKAPPID})
    assert bob["profile"] == {i["Tag"]: i["Value"] for i in by_name["uint32-tags"]["body"]["ProfileItem"]}
    assert all(type(v) is int for v in bob["profile"].values())
    _, carol = await get_json(client, user_path("carol"), {"sdkappid": SDKAPPID})
    assert carol["profile"] == {
        "Tag_Profile_Custom_Hobby": "climbing",
        "Tag_Profile_Custom_Vip": "gold",
        "Tag_Profile_IM_FutureField": "kept as is",
    }
    _, id1 = await get_json(client, user_path("id1"), {"sdkappid": SDKAPPID})
    assert id1["profile"][NICK] == "nick1" and len(id1["profile"]) == 4

    fold = await fold_from_log(db)
    assert fold_users(fold) == [(SDKAPPID, u) for u in ("alice", "bob", "carol", "id1")]
    for sdkappid, user in fold_users(fold):
        assert await actual_answer(client, sdkappid, user) == expected_answer(fold, sdkappid, user), user


async def test_random_log_matches_the_pure_fold(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    rng = random.Random(11)
    users = ["r1", "r/2", "r 3", "r%4"]
    await append(db, random_deliveries(rng, users, 300, sdkappids=(SDKAPPID, OTHER_SDKAPPID)))
    fold = await fold_from_log(db)
    assert len(fold_users(fold)) == 8
    for sdkappid, user in fold_users(fold):
        assert await actual_answer(client, sdkappid, user) == expected_answer(fold, sdkappid, user), user
        for at in (1_700_000_000_000 - 1, 1_700_000_010_000, 1_700_000_025_000, 1_700_000_050_000):
            status, body = await get_json(client, user_path(user), {"sdkappid": sdkappid, "at": at})
            want = fold.profile(sdkappid, user, at)
            assert (status, body.get("profile")) == ((200, want) if want else (404, None)), (user, at)


async def test_event_times_at_the_ends_of_int64_render_in_every_answer(client: AsyncTestClient[Any]) -> None:
    """Regression: EventTimes past year 9999 (int64 is accepted) made the reads answer 500."""
    latest, earliest = 2**63 - 1, 0  # EventTime is a non-negative int64
    await post_delivery(client, Delivery("far", earliest, [(NICK, "dawn")]))
    await post_delivery(client, Delivery("far", latest, [(NICK, "dusk")]))
    params = {"sdkappid": SDKAPPID}
    status, body = await get_json(client, user_path("far", "profile"), params)
    assert status == 200, body
    assert body["profile"] == {NICK: "dusk"} and body["updated_at"] == "+292278994-08-17T07:12:55.807Z"
    status, body = await get_json(client, user_path("far", "profile"), {**params, "at": str(latest)})
    assert status == 200, body
    assert body["at"] == "+292278994-08-17T07:12:55.807Z" and body["version"] == 2
    status, body = await get_json(
        client, user_path("far", "profile"), {**params, "at": "9999-12-31T23:59:59.999Z"}
    )
    assert status == 200 and body["profile"] == {NICK: "dawn"}, body
    status, body = await get_json(client, user_path("far", "profile-history"), params)
    assert status == 200, body
    assert [e["event_time_iso"] for e in body["entries"]] == [
        "+292278994-08-17T07:12:55.807Z",
        "1970-01-01T00:00:00.000Z",
    ]
