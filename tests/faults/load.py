"""A callback load for fault tests: clients that deliver distinct events and retry like Tencent's.

Each client posts its own deliveries one after another and retries one until it gets a 200: on
connection errors (a worker killed under it) and on 5xx (the database away or stalled). Every
attempt is recorded with its send and receive times (monotonic clock), its status and the answering
process, so that a test can say what happened during a fault, and check afterwards that every
acknowledged delivery is in the log exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import psutil

from tests.conftest import OK_REPLY, is_fail_reply, portrait_body, portrait_query

RETRY_PAUSE = 0.05  # the sender's pause before a retry, so that an outage is not a busy loop
DELIVERY_DEADLINE = 45.0  # a delivery still not acknowledged after this fails the test


@dataclass(frozen=True)
class Attempt:
    """One POST of one delivery."""

    client: int
    index: int
    sent: float
    received: float
    status: int | None  # None: no HTTP answer (connection refused, reset, closed)
    error: str | None
    process: str | None  # the answering process (the per-process prefix of X-Request-ID)


def delivery(client: int, index: int) -> tuple[dict[str, str], dict[str, Any]]:
    """Client `client`'s `index`-th delivery: mostly profile changes, every 7th another command."""
    event_time = 1_700_000_000_000 + client * 1_000_000 + index
    if index % 7 == 6:
        body: dict[str, Any] = {
            "CallbackCommand": "State.StateChange",
            "EventTime": event_time,
            "Info": {"Action": "Login", "To_Account": f"c{client}", "Seq": index},
        }
        return portrait_query(CallbackCommand="State.StateChange"), body
    body = portrait_body(f"c{client}-u{index % 5}", event_time, Tag_Profile_IM_Level=index)
    return portrait_query(), body


def content_key(body: Any) -> str:
    """Equal for equal JSON content."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Load:
    """`clients` senders of `per_client` distinct deliveries each, against `base_url`."""

    base_url: str
    clients: int = 8
    per_client: int = 150
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    in_flight: int = 0
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def total(self) -> int:
        return self.clients * self.per_client

    async def run(self) -> None:
        """Deliver everything; fails when a delivery is refused with a 4xx or never acknowledged."""
        await asyncio.gather(*(self._client(c) for c in range(self.clients)))

    async def wait_for(self, predicate: Any, what: str, within: float = 60) -> None:
        """Wait until `predicate()` holds, re-checked after each attempt; AssertionError after `within` s."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(predicate), within)
            except TimeoutError:
                raise AssertionError(f"timed out after {within} s waiting for {what}") from None

    async def wait_for_acks(self, count: int) -> None:
        await self.wait_for(lambda: len(self.acked) >= count, f"{count} acknowledged deliveries")

    def during(self, start: float, end: float) -> list[Attempt]:
        """Attempts sent and answered entirely within [start, end]."""
        return [a for a in self.attempts if start <= a.sent and a.received <= end]

    async def notify(self) -> None:
        """Wake the waiters of `wait_for` after a change outside this load (another sender's)."""
        async with self._progress:
            self._progress.notify_all()

    async def _record(self, attempt: Attempt) -> None:
        async with self._progress:
            self.attempts.append(attempt)
            self._progress.notify_all()

    async def _client(self, client: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10, limits=limits) as http:
            for index in range(self.per_client):
                query, body = delivery(client, index)
                await self._deliver(http, client, index, query, body)

    async def _deliver(
        self, http: httpx.AsyncClient, client: int, index: int, query: dict[str, str], body: dict[str, Any]
    ) -> None:
        content = json.dumps(body).encode()
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while True:
            sent = time.monotonic()
            async with self._progress:  # a fault may wait for deliveries in flight
                self.in_flight += 1
                self._progress.notify_all()
            try:
                reply = await http.post("/callback", params=query, content=content)
            except httpx.TransportError as exc:
                await self._record(
                    Attempt(client, index, sent, time.monotonic(), None, type(exc).__name__, None)
                )
            else:
                received = time.monotonic()
                process = reply.headers.get("x-request-id", "").split("-")[0] or None
                if reply.status_code == 200:
                    assert reply.json() == OK_REPLY, reply.text
                    self.acked[(client, index)] = body
                await self._record(Attempt(client, index, sent, received, reply.status_code, None, process))
                if reply.status_code == 200:
                    return
                assert reply.status_code >= 500, (
                    f"a good delivery was refused: {reply.status_code} {reply.text}"
                )
                assert is_fail_reply(reply.json()), reply.text
            finally:
                self.in_flight -= 1
            assert time.monotonic() < deadline, (
                f"delivery {client}/{index} not acknowledged in {DELIVERY_DEADLINE} s"
            )
            await asyncio.sleep(RETRY_PAUSE)


async def assert_stored_exactly_once(connection: asyncpg.Connection[Any], load: Load) -> None:
    """Every acknowledged delivery is in the log exactly once, and the log holds nothing else."""
    rows = await connection.fetch("SELECT body FROM events ORDER BY position")
    stored = Counter(content_key(json.loads(row["body"])) for row in rows)
    missing = [key for key, body in load.acked.items() if stored[content_key(body)] != 1]
    assert not missing, f"{len(missing)} acknowledged deliveries not stored exactly once, e.g. {missing[:5]}"
    assert sum(stored.values()) == len(load.acked) == load.total, "the log holds something not delivered"
    head = await connection.fetchval("SELECT position FROM log_head")
    assert head == load.total


def worker_processes(serve: psutil.Process) -> list[psutil.Process]:
    """The live uvicorn workers of a `profile-audit serve` process (its multiprocessing children)."""
    workers = []
    for child in serve.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:
            continue
    return workers
