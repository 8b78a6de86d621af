"""POST /callback refuses hostile and invalid deliveries with a 4xx FAIL reply.

Unauthenticated deliveries leave no trace; authenticated but invalid ones are kept, with the reason
and the raw bytes, in `rejected_deliveries`; none of them ever becomes an event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.ingest import expected_sign
from tests.conftest import (
    OK_REPLY,
    SDKAPPID,
    count_rows,
    is_fail_reply,
    make_settings,
    portrait_body,
    portrait_query,
)

TOKEN = "callback-token-123"
GOOD_BODY = json.dumps(portrait_body("victim")).encode()


@pytest.fixture
async def signed_client(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with a callback token configured: every callback needs Sign and RequestTime."""
    app = create_app(make_settings(database_url, callback_token=TOKEN))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def signed_query(offset: int = 0, *, token: str = TOKEN, **extra: str) -> dict[str, str]:
    request_time = str(int(time.time()) + offset)
    return portrait_query(RequestTime=request_time, Sign=expected_sign(token, request_time), **extra)


async def post(client: AsyncTestClient[Any], query: dict[str, str], raw: bytes) -> Any:
    return await client.post(
        "/callback", params=query, content=raw, headers={"Content-Type": "application/json"}
    )


async def assert_nothing_recorded(db: asyncpg.Connection[Any]) -> None:
    assert await count_rows(db, "events") == 0
    assert await count_rows(db, "rejected_deliveries") == 0
    head = await db.fetchrow("SELECT position FROM log_head")
    assert head is not None and head["position"] == 0


def without(query: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in query.items() if k != key}


# --- SdkAppid (no token configured) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param(without(portrait_query(), "SdkAppid"), 400, id="missing"),
        pytest.param(portrait_query(SdkAppid=""), 400, id="empty"),
        pytest.param(portrait_query(SdkAppid="abc"), 400, id="letters"),
        pytest.param(portrait_query(SdkAppid="-1400000000"), 400, id="negative"),
        pytest.param(portrait_query(SdkAppid="1400000000.0"), 400, id="decimal"),
        pytest.param(portrait_query(SdkAppid="１４０００００００００"), 400, id="fullwidth"),
        pytest.param(portrait_query(SdkAppid="9" * 40), 400, id="huge"),
        pytest.param(portrait_query(SdkAppid="1400000099"), 403, id="unconfigured"),
        pytest.param(portrait_query(SdkAppid="0"), 403, id="zero"),
    ],
)
async def test_bad_sdkappid_is_refused_and_nothing_recorded(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], query: dict[str, str], status: int
) -> None:
    reply = await post(client, query, GOOD_BODY)
    assert reply.status_code == status, reply.text
    assert is_fail_reply(reply.json()), reply.text
    # Even an invalid body is not kept when the delivery is not authenticated.
    reply = await post(client, query, b"not json")
    assert reply.status_code == status
    assert is_fail_reply(reply.json())
    await assert_nothing_recorded(db)


# --- Sign (token configured) ----------------------------------------------------------------


async def test_valid_sign_is_accepted(
    signed_client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    for offset in (0, -30, 30):
        reply = await post(
            signed_client, signed_query(offset), json.dumps(portrait_body(f"u{offset}")).encode()
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == OK_REPLY
    assert await count_rows(db, "events") == 3


# Built when the test runs, not at collection, so that the clock offsets are exact.
BAD_SIGNS: dict[str, Callable[[], dict[str, str]]] = {
    "Sign-missing": lambda: without(signed_query(), "Sign"),
    "RequestTime-missing": lambda: without(signed_query(), "RequestTime"),
    "both-missing": lambda: portrait_query(),
    "Sign-empty": lambda: {**signed_query(), "Sign": ""},
    "Sign-wrong": lambda: {**signed_query(), "Sign": "0" * 64},
    "Sign-other-token": lambda: signed_query(token="another-token"),
    "Sign-of-other-time": lambda: {**signed_query(), "RequestTime": str(int(time.time()) + 1)},
    "RequestTime-not-a-number": lambda: {**signed_query(), "RequestTime": "soon"},
    "expired-1h": lambda: signed_query(-3600),
    "expired-3min": lambda: signed_query(-180),
    "future-3min": lambda: signed_query(180),
    "future-1d": lambda: signed_query(86400),
}


@pytest.mark.parametrize("case", list(BAD_SIGNS))
async def test_bad_sign_is_401_and_nothing_recorded(
    signed_client: AsyncTestClient[Any], db: asyncpg.Connection[Any], case: str
) -> None:
    query = BAD_SIGNS[case]()
    reply = await post(signed_client, query, GOOD_BODY)
    assert reply.status_code == 401, reply.text
    assert is_fail_reply(reply.json()), reply.text
    reply = await post(signed_client, query, b"{broken")
    assert reply.status_code == 401
    await assert_nothing_recorded(db)


async def test_sdkappid_is_checked_before_sign(
    signed_client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    reply = await post(signed_client, signed_query(SdkAppid="1400000099"), GOOD_BODY)
    assert reply.status_code == 403
    assert is_fail_reply(reply.json())
    await assert_nothing_recorded(db)


# --- invalid bodies of authenticated deliveries ----------------------------------------------


def portrait(**changes: Any) -> bytes:
    body = portrait_body("bad")
    body.update(changes)
    return json.dumps(body).encode()


def item(**entry: Any) -> bytes:
    body = portrait_body("bad")
    body["ProfileItem"] = [entry]
    return json.dumps(body).encode()


INVALID_BODIES = [
    pytest.param(b"", "JSON", id="empty"),
    pytest.param(b"not json at all", "JSON", id="not-json"),
    pytest.param(b'{"CallbackCommand": "Profile.CallbackPortraitSet"', "JSON", id="truncated"),
    pytest.param(b'{"From_Account":"\xff\xfe"}', "JSON", id="invalid-utf8"),
    pytest.param(b'{"a":"\\ud800"}', "JSON", id="lone-surrogate"),
    pytest.param(b"[" * 50_000, "JSON", id="deep-nesting"),
    pytest.param(b'["Profile.CallbackPortraitSet"]', "object", id="array"),
    pytest.param(b"42", "object", id="number"),
    pytest.param(b"null", "object", id="null"),
    pytest.param(portrait(EventTime="1656921052497"), "EventTime", id="EventTime-string"),
    pytest.param(portrait(EventTime=1656921052497.5), "EventTime", id="EventTime-float"),
    pytest.param(portrait(EventTime=True), "EventTime", id="EventTime-bool"),
    pytest.param(portrait(EventTime=-1), "EventTime", id="EventTime-negative"),
    pytest.param(item(Tag="Tag_Profile_IM_Level", Value=1.5), "Value", id="Value-float"),
    pytest.param(item(Tag="Tag_Profile_IM_Nick", Value=None), "Value", id="Value-null"),
    pytest.param(item(Tag="Tag_Profile_IM_Nick", Value={"x": 1}), "Value", id="Value-object"),
    pytest.param(item(Tag="Tag_Profile_IM_Nick", Value=False), "Value", id="Value-bool"),
    pytest.param(item(Tag="", Value="x"), "Tag", id="Tag-empty"),
    pytest.param(
        json.dumps({k: v for k, v in portrait_body().items() if k != "From_Account"}).encode(),
        "From_Account",
        id="From_Account-missing",
    ),
    pytest.param(
        portrait(ProfileItem={"Tag": "Tag_Profile_IM_Nick", "Value": "x"}),
        "ProfileItem",
        id="ProfileItem-obj",
    ),
    pytest.param(portrait(ProfileItem="x"), "ProfileItem", id="ProfileItem-string"),
    pytest.param(portrait(From_Account="nul\u0000inside"), "NUL", id="NUL"),
]


@pytest.mark.parametrize(("raw", "reason_mentions"), INVALID_BODIES)
async def test_invalid_body_is_400_and_kept_as_rejected(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], raw: bytes, reason_mentions: str
) -> None:
    query = portrait_query(ClientIP="198.51.100.9")
    reply = await post(client, query, raw)
    assert reply.status_code == 400, reply.text
    assert is_fail_reply(reply.json())
    assert reason_mentions in reply.json()["ErrorInfo"]

    assert await count_rows(db, "events") == 0
    rows = await db.fetch("SELECT sdkappid, query::text AS query, body, reason FROM rejected_deliveries")
    assert len(rows) == 1
    row = rows[0]
    assert row["sdkappid"] == SDKAPPID
    assert bytes(row["body"]) == raw, "the raw bytes are kept exactly"
    assert reason_mentions in row["reason"]
    assert row["reason"] == reply.json()["ErrorInfo"]
    assert json.loads(row["query"]) == query


async def test_invalid_body_with_valid_sign_is_kept(
    signed_client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    query = signed_query()
    reply = await post(signed_client, query, b"{oops")
    assert reply.status_code == 400
    assert is_fail_reply(reply.json())
    assert await count_rows(db, "events") == 0
    row = await db.fetchrow("SELECT body, query::text AS query FROM rejected_deliveries")
    assert row is not None and bytes(row["body"]) == b"{oops"
    assert json.loads(row["query"]) == query, "the query is kept as delivered, Sign included"


async def test_nul_in_the_query_string_is_rejected_and_kept(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    reply = await client.post(
        "/callback?SdkAppid=1400000000&CallbackCommand=Profile.CallbackPortraitSet&ClientIP=1.2.3.4%00",
        content=GOOD_BODY,
    )
    assert reply.status_code == 400, reply.text
    assert is_fail_reply(reply.json())
    assert await count_rows(db, "events") == 0
    assert await count_rows(db, "rejected_deliveries") == 1


async def test_invalid_utf8_in_the_query_string_is_data(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    reply = await client.post(
        "/callback?SdkAppid=1400000000&CallbackCommand=Profile.CallbackPortraitSet&OptPlatform=%ff%ed%a0%80",
        content=GOOD_BODY,
    )
    assert reply.status_code == 200, reply.text
    assert await count_rows(db, "events") == 1


# --- size limit ---------------------------------------------------------------------------------


async def test_body_over_the_limit_is_413(database_url: str, db: asyncpg.Connection[Any]) -> None:
    limit = 1024
    app = create_app(make_settings(database_url, max_body_bytes=limit))
    base = json.dumps(portrait_body("big", Tag_Profile_IM_Nick="")).encode()
    padding = limit - len(base)

    def body_of(size: int) -> bytes:
        raw = json.dumps(portrait_body("big", Tag_Profile_IM_Nick="n" * (size - len(base)))).encode()
        assert len(raw) == size
        return raw

    assert padding > 0
    async with AsyncTestClient(app=app) as small:
        at_limit = await post(small, portrait_query(), body_of(limit))
        assert at_limit.status_code == 200, at_limit.text
        for size in (limit + 1, 10 * limit, 1024 * 1024):
            reply = await post(small, portrait_query(), body_of(size))
            assert reply.status_code == 413, reply.text
            assert is_fail_reply(reply.json())
    assert await count_rows(db, "events") == 1
    assert await count_rows(db, "rejected_deliveries") == 0
