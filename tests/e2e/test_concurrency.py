"""Real concurrency: `serve --workers 2`, many writers and a paging reader at the same time.

Proves over HTTP, across two processes, that positions follow commit order (a reader following
`after=` never skips or repeats one), that every acknowledged delivery is in the log exactly once,
and that redeliveries add nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.verify import verify_log
from tests.conftest import (
    AUTH,
    OK_REPLY,
    LiveServer,
    count_rows,
    is_fail_reply,
    portrait_body,
    portrait_query,
)

pytestmark = pytest.mark.e2e

WRITERS = 8
PER_WRITER = 60
MAX_ATTEMPTS = 20


def delivery(writer: int, index: int) -> tuple[dict[str, str], dict[str, Any]]:
    """A distinct delivery: mostly profile changes, some other commands."""
    if index % 5 == 4:
        body: dict[str, Any] = {
            "CallbackCommand": "State.StateChange",
            "EventTime": 1_700_000_000_000 + writer * 1000 + index,
            "Info": {"Action": "Login", "To_Account": f"w{writer}", "Seq": index},
        }
        return portrait_query(CallbackCommand="State.StateChange", OptPlatform="IOS"), body
    user = f"w{writer}-u{index % 3}"
    body = portrait_body(user, 1_700_000_000_000 + writer * 1000 + index, Tag_Profile_IM_Level=index)
    return portrait_query(), body


def key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def reordered(body: dict[str, Any]) -> bytes:
    """The same JSON content, keys in reverse order, other whitespace."""

    def flip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: flip(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [flip(v) for v in value]
        return value

    return json.dumps(flip(body), indent=2).encode()


async def deliver(http: httpx.AsyncClient, query: dict[str, str], content: bytes) -> int:
    """POST until OK, as the IM backend's retry-on-timeout would; returns the attempts it took."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        reply = await http.post("/callback", params=query, content=content)
        if reply.status_code == 200:
            assert reply.json() == OK_REPLY
            return attempt
        assert reply.status_code == 503, reply.text  # the only acceptable refusal of a good delivery
        assert is_fail_reply(reply.json())
    pytest.fail(f"a delivery was refused {MAX_ATTEMPTS} times")


async def read_page(http: httpx.AsyncClient, after: int, limit: int) -> list[dict[str, Any]]:
    reply = await http.get("/events", params={"after": after, "limit": limit}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    page = reply.json()
    events: list[dict[str, Any]] = page["events"]
    assert page["next_after"] == (events[-1]["position"] if events else after)
    return events


async def read_all(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while page := await read_page(http, events[-1]["position"] if events else 0, 1000):
        events.extend(page)
    return events


async def test_concurrent_writers_and_a_paging_reader(live_server: LiveServer, database_url: str) -> None:
    plan = [[delivery(w, i) for i in range(PER_WRITER)] for w in range(WRITERS)]
    total = WRITERS * PER_WRITER
    acked: list[dict[str, Any]] = []
    writers_done = asyncio.Event()
    limits = httpx.Limits(max_connections=WRITERS + 4, max_keepalive_connections=WRITERS + 4)

    async with httpx.AsyncClient(base_url=live_server.url, timeout=30, limits=limits) as http:

        async def writer(deliveries: list[tuple[dict[str, str], dict[str, Any]]]) -> None:
            for query, body in deliveries:
                await deliver(http, query, json.dumps(body).encode())
                acked.append(body)

        async def reader() -> list[int]:
            """Follow the log with after= while it grows; every position must come in order."""
            seen: list[int] = []
            rng = random.Random(7)
            while True:
                finished = writers_done.is_set()  # read before the page: then the page is complete
                page = await read_page(http, seen[-1] if seen else 0, rng.choice([1, 7, 50, 200]))
                positions = [event["position"] for event in page]
                expected_next = (seen[-1] if seen else 0) + 1
                assert positions == list(range(expected_next, expected_next + len(positions))), (
                    f"reader skipped or repeated a position: after {seen[-1:]} got {positions}"
                )
                seen.extend(positions)
                if finished and not positions:
                    return seen

        async def writers() -> None:
            try:
                await asyncio.gather(*(writer(chunk) for chunk in plan))
            finally:
                writers_done.set()

        seen, _ = await asyncio.gather(reader(), writers())

        assert len(acked) == total
        assert seen == list(range(1, total + 1))

        final = await read_all(http)
        assert [e["position"] for e in final] == list(range(1, total + 1))
        stored: dict[str, int] = {}
        for event in final:
            stored[key(event["payload"])] = stored.get(key(event["payload"]), 0) + 1
        for body in acked:
            assert stored.get(key(body)) == 1, f"acknowledged delivery not stored exactly once: {body}"
        assert len(stored) == total

        # Redeliver a sample concurrently, keys reordered: all OK, nothing new.
        sample = random.Random(11).sample([d for chunk in plan for d in chunk], 80)
        await asyncio.gather(*(deliver(http, query, reordered(body)) for query, body in sample))
        assert [e["position"] for e in await read_all(http)] == list(range(1, total + 1))

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await count_rows(connection, "events") == total
        assert await connection.fetchval("SELECT position FROM log_head") == total
        assert await count_rows(connection, "rejected_deliveries") == 0
        result = await verify_log(connection)
        assert result.intact, result
        assert result.events_checked == total
        versions = await connection.fetch(
            "SELECT user_id, array_agg(user_version ORDER BY position) AS versions"
            " FROM events WHERE user_id IS NOT NULL GROUP BY user_id"
        )
        for row in versions:
            assert row["versions"] == list(range(1, len(row["versions"]) + 1)), row["user_id"]
    finally:
        await connection.close()
