"""Metrics, structured logs with request ids, the interactive API page, and the feed's buffer."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import asyncpg_dsn
from app.eventstore import EventStore
from app.feed import Feed, Lagging, store_reader
from app.ingest import decode_callback
from app.logs import configure_logging
from tests.conftest import SDKAPPID, portrait_body, portrait_query


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text as {(sample name, labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_what_happened(client: AsyncTestClient[Any]) -> None:
    before = samples((await client.get("/metrics")).text)
    ok = await client.post("/callback", params=portrait_query(), json=portrait_body("m1", 1))
    again = await client.post("/callback", params=portrait_query(), json=portrait_body("m1", 1))
    bad = await client.post("/callback", params=portrait_query(), content=b"not json")
    assert (ok.status_code, again.status_code, bad.status_code) == (200, 200, 400)
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    after = samples(reply.text)

    def grew(name: str, by: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        assert after.get(key, 0) - before.get(key, 0) == by, (name, labels)

    command = "Profile.CallbackPortraitSet"
    grew("profile_audit_deliveries_total", 1, command=command, outcome="ok")
    grew("profile_audit_deliveries_total", 1, command=command, outcome="duplicate")
    grew("profile_audit_deliveries_total", 1, command=command, outcome="rejected")
    grew("profile_audit_rejected_deliveries_total", 1)
    grew("profile_audit_reply_seconds_count", 3)
    grew("profile_audit_commit_batch_size_count", 2)
    grew("profile_audit_append_lock_wait_seconds_count", 2)
    assert after[("profile_audit_events", ())] == 1
    for projection in ("profiles", "profile_changes"):
        code = after[("profile_audit_projection_version", (("projection", projection), ("source", "code")))]
        table = after[("profile_audit_projection_version", (("projection", projection), ("source", "table")))]
        assert code == table == 1


async def test_logs_are_json_lines_with_the_request_id(
    client: AsyncTestClient[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json=True)
    reply = await client.post(
        "/callback", params={"SdkAppid": "42"}, json={}, headers={"X-Request-ID": "trace-me-1"}
    )
    assert reply.status_code == 403
    assert reply.headers["x-request-id"] == "trace-me-1"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("event") == "callback refused"]
    assert refused and refused[-1]["request_id"] == "trace-me-1"
    assert refused[-1]["level"] == "warning" and refused[-1]["outcome"] == "unauthorized"
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) > 8, "a request id is made when none is sent"
    logging.getLogger().handlers.clear()


async def test_interactive_api_page_and_document(client: AsyncTestClient[Any]) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    document = (await client.get("/schema/openapi.json")).json()
    assert document["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    callback = document["paths"]["/callback"]["post"]
    example = callback["requestBody"]["content"]["application/json"]["examples"]["doc-sample"]
    assert example["value"]["From_Account"] == "id1"
    for path in ("/users/{user_id}/profile", "/users/{user_id}/profile-history", "/events", "/events/stream"):
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"BearerToken": []}], path
        assert "200" in operation["responses"], path


async def test_a_subscriber_that_falls_behind_is_dropped_without_slowing_appends(
    database_url: str,
) -> None:
    dsn = asyncpg_dsn(database_url)
    store = EventStore()
    reader_connection = await asyncpg.connect(dsn)
    lock = asyncio.Lock()

    class Borrow:
        async def __aenter__(self) -> asyncpg.Connection[Any]:
            await lock.acquire()
            return reader_connection

        async def __aexit__(self, *_: object) -> None:
            lock.release()

    feed = Feed(dsn, store_reader(store, Borrow), capacity=5, poll_seconds=0.05)
    await feed.start(head=0)
    subscription = feed.subscribe(0, keepalive=60)
    first = asyncio.create_task(anext(subscription))  # registers, then waits for a live event
    while feed.subscribers == 0:  # noqa: ASYNC110 - waits for the registration, a state, not a time
        await asyncio.sleep(0.01)
    writer = await asyncpg.connect(dsn)
    try:
        events = [
            decode_callback(
                portrait_query(),
                json.dumps(portrait_body(f"lag-{i}", i)).encode(),
                sdkappid=SDKAPPID,
                received_at=datetime.now(UTC),
            )
            for i in range(40)
        ]
        appended = await store.insert_events(writer, events)
        assert [a.position for a in appended] == list(range(1, 41)), "appends never wait for readers"
        event = await asyncio.wait_for(first, 30)
        assert event is not None and event.position == 1
        received = [1]
        with pytest.raises(Lagging):
            async for later in subscription:  # the buffer (5) overflowed while nobody read
                assert later is not None
                received.append(later.position)
        assert received == list(range(1, len(received) + 1)), "what was delivered has no gap"
        assert len(received) < 40
        assert feed.subscribers == 0
    finally:
        await feed.stop()
        await writer.close()
        await reader_connection.close()
