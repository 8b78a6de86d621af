"""GET /events/stream against a real `profile-audit serve`: resume, fan-out, keep-alive, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    AUTH,
    LiveServer,
    portrait_body,
    portrait_query,
    running_server,
    serve_env,
)

pytestmark = pytest.mark.e2e


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream into messages ({'id', 'event', 'data'} or {'comment'})."""
    message: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            message[field] = value[1:] if value.startswith(" ") else value


async def post_deliveries(http: httpx.AsyncClient, prefix: str, count: int, writers: int = 8) -> int:
    """Post `count` distinct deliveries from `writers` concurrent clients; the number acked."""
    acked = 0

    async def writer(w: int) -> None:
        nonlocal acked
        for i in range(w, count, writers):
            reply = await http.post(
                "/callback",
                params=portrait_query(),
                json=portrait_body(f"{prefix}-{i % 17}", 1_700_000_000_000 + i, Tag_Profile_IM_Level=i),
            )
            assert reply.status_code == 200, reply.text
            acked += 1

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return acked


async def read_ids(
    http: httpx.AsyncClient, last_event_id: int, stop_after: int, *, until: int | None = None
) -> list[int]:
    """Ids from one connection resumed after `last_event_id`: `stop_after` of them, or up to `until`."""
    ids: list[int] = []
    headers = {**AUTH, "Last-Event-ID": str(last_event_id)}
    async with http.stream("GET", "/events/stream", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for message in sse_messages(response):
            if "id" not in message:
                continue
            ids.append(int(message["id"]))
            if len(ids) == stop_after or (until is not None and ids[-1] >= until):
                break
    return ids


async def test_resume_during_concurrent_ingest_has_no_gap_and_no_duplicate(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        assert await post_deliveries(http, "before", 40) == 40
        writing = asyncio.create_task(post_deliveries(http, "during", 400))
        seen = await read_ids(http, 10, stop_after=60)  # one connection, dropped mid-way
        while seen[-1] < 440:  # reconnect every 75 events until the last delivery has arrived
            seen += await read_ids(http, seen[-1], stop_after=75, until=440)
        assert await writing == 400
    assert seen == list(range(11, 441)), "every event once, in position order, across reconnects"


async def test_stream_requires_a_token(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        assert (await http.get("/events/stream")).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert (await http.get("/events/stream", headers=bad)).status_code == 401
        not_a_position = {**AUTH, "Last-Event-ID": "abc"}
        assert (await http.get("/events/stream", headers=not_a_position)).status_code == 400


async def test_keepalive_comments_while_idle(database_url: str, tmp_path: Path) -> None:
    env = serve_env(database_url, PROFILE_AUDIT_STREAM_KEEPALIVE_SECONDS="0.2")
    with running_server(env, tmp_path) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as http,
            http.stream("GET", "/events/stream", headers=AUTH) as response,
        ):
            comments = 0
            async for message in sse_messages(response):
                assert "id" not in message, "the log is empty"
                comments += message.get("comment") == "keep-alive"
                if comments == 2:
                    break
    assert comments == 2


async def test_five_hundred_subscribers_on_one_worker(database_url: str, tmp_path: Path) -> None:
    env = serve_env(database_url)
    subscribers = 500
    with running_server(env, tmp_path, workers=1) as server:
        limits = httpx.Limits(max_connections=subscribers + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            connected = 0
            all_connected = asyncio.Event()
            received: list[list[int]] = []

            async def subscriber() -> None:
                nonlocal connected
                ids: list[int] = []
                async with http.stream("GET", "/events/stream", headers=AUTH) as response:
                    assert response.status_code == 200
                    connected += 1
                    if connected == subscribers:
                        all_connected.set()
                    async for message in sse_messages(response):
                        if "id" in message:
                            ids.append(int(message["id"]))
                            if len(ids) == 3:
                                break
                received.append(ids)

            tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
            await asyncio.wait_for(all_connected.wait(), 60)
            for i in range(3):
                reply = await http.post(
                    "/callback", params=portrait_query(), json=portrait_body("fan", 1_700_000_000_000 + i)
                )
                assert reply.status_code == 200
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert len(received) == subscribers
    assert all(ids == [1, 2, 3] for ids in received)
