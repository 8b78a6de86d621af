"""From_Account and Tag are index keys: one too long for PostgreSQL must be a 400, never a 503.

Found by tests/fuzz/test_callback_fuzz.py: a From_Account or a Tag of a few kB of incompressible text
made PostgreSQL refuse the index entry (program_limit_exceeded), which the service answered 503 on
every redelivery, forever, keeping nothing. Keys are now bounded at 1,024 UTF-8 bytes (README) and a
longer one is an invalid body like any other: 400, kept in rejected_deliveries. And should the
database still refuse one event of a batch for its size, its neighbours are committed all the same.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.config import asyncpg_dsn
from app.groupcommit import GroupCommitter, StoreUnavailable
from app.ingest import MAX_KEY_BYTES, NewEvent, decode_callback
from tests.conftest import AUTH, OK_REPLY, SDKAPPID, count_rows, is_fail_reply, portrait_body, portrait_query


def noise(size: int, seed: int = 1) -> str:
    """Incompressible text of `size` characters (what defeats PostgreSQL's index compression)."""
    rng = random.Random(seed)
    return "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(size)
    )


def with_tag(tag: str, user: str = "u") -> dict[str, Any]:
    body = portrait_body(user)
    body["ProfileItem"] = [{"Tag": tag, "Value": "v"}]
    return body


async def post(client: AsyncTestClient[Any], body: dict[str, Any]) -> Any:
    content = json.dumps(body, ensure_ascii=False).encode()
    return await client.post("/callback", params=portrait_query(), content=content)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(portrait_body(noise(10_000)), id="From_Account-10k"),
        pytest.param(portrait_body("x" * (MAX_KEY_BYTES + 1)), id="From_Account-limit+1"),
        pytest.param(portrait_body("😀" * (MAX_KEY_BYTES // 4) + "a"), id="From_Account-limit+1-emoji"),
        pytest.param(with_tag(noise(10_000)), id="Tag-10k"),
        pytest.param(with_tag("é" * (MAX_KEY_BYTES // 2) + "a"), id="Tag-limit+1-2-byte"),
    ],
)
async def test_a_key_over_the_limit_is_400_and_kept(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], body: dict[str, Any]
) -> None:
    reply = await post(client, body)
    assert reply.status_code == 400, reply.text
    assert is_fail_reply(reply.json())
    assert "longer than 1024 bytes" in reply.json()["ErrorInfo"]
    assert await count_rows(db, "events") == 0
    assert await count_rows(db, "rejected_deliveries") == 1


async def test_keys_at_the_limit_are_stored_and_readable(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    # 4-byte characters that PostgreSQL cannot compress away: the worst case the bound allows.
    user = "".join(chr(0x1F300 + random.Random(2).randrange(700)) for _ in range(MAX_KEY_BYTES // 4))
    tag = "".join(chr(0x1F300 + random.Random(3).randrange(700)) for _ in range(MAX_KEY_BYTES // 4))
    assert len(user.encode()) == len(tag.encode()) == MAX_KEY_BYTES
    for event_time in (1, 2):
        body = with_tag(tag, user)
        body["EventTime"] = event_time
        reply = await post(client, body)
        assert reply.json() == OK_REPLY, reply.text
    profile = await client.get(
        f"/users/{quote(user, safe='')}/profile", params={"sdkappid": SDKAPPID}, headers=AUTH
    )
    assert profile.status_code == 200, profile.text
    assert profile.json()["profile"] == {tag: "v"}
    assert await count_rows(db, "events") == 2


def event_for(user: str) -> NewEvent:
    raw = json.dumps(portrait_body(user)).encode()
    return decode_callback(portrait_query(), raw, sdkappid=SDKAPPID, received_at=datetime.now(UTC))


async def test_an_event_refused_for_its_size_fails_alone(
    database_url: str, db: asyncpg.Connection[Any]
) -> None:
    """Bypassing the ingest bound: the database refuses the index entry (class 54); only that
    delivery fails, its neighbours in the same batch are committed, the writer carries on."""
    committer = GroupCommitter(asyncpg_dsn(database_url))
    await committer.start()
    try:
        too_big = msgspec.structs.replace(event_for("big"), user_id=noise(10_000))
        results = await asyncio.gather(
            committer.append(event_for("before")),
            committer.append(too_big),
            committer.append(event_for("after")),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreUnavailable)
        assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
        assert not (await committer.append(event_for("later"))).duplicate
    finally:
        await committer.stop()
    users = [r["user_id"] for r in await db.fetch("SELECT user_id FROM events ORDER BY position")]
    assert sorted(users) == ["after", "before", "later"]
