"""A rebuild while a real `profile-audit serve --workers 2` ingests and answers reads.

The overlap is made certain, not left to timing: the rebuild (in a thread of the test process)
stops after its shadow tables are built and before it swaps them in, and goes on only once writes
and reads have completed during that pause. Writers and readers keep going until the rebuild has
returned, so they also run across the catch-up and the swap.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from app.config import asyncpg_dsn
from app.projections import REGISTRY
from tests.conftest import SDKAPPID, LiveServer
from tests.profile_helpers import (
    Delivery,
    ThreadedRebuild,
    actual_answer,
    append,
    expected_answer,
    fold_from_log,
    fold_users,
    get_json,
    post_delivery,
    projection_versions,
    random_deliveries,
    user_path,
)

pytestmark = pytest.mark.e2e

USERS = [f"load-{i}" for i in range(120)] + ["u/1", "u 2", "ü%3", "🌸", ".."]
SEEDED_EVENTS = 3000
WRITERS = 4
READERS = 6
DURING_PAUSE = 5  # writes and reads that must complete while the rebuild is held mid-way


@dataclass(frozen=True)
class Call:
    kind: str  # write | profile | history
    started: float
    ended: float
    status: int
    ok: bool
    detail: str = ""


class Traffic:
    """Writers and readers against the live server, every call recorded."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.calls: list[Call] = []
        self.stop = asyncio.Event()
        self.pause_started: float | None = None
        self.enough_during_pause = asyncio.Event()

    def record(self, call: Call) -> None:
        self.calls.append(call)
        if self.pause_started is not None and not self.enough_during_pause.is_set():
            during = [c for c in self.calls if c.started >= self.pause_started]
            writes = sum(c.kind == "write" for c in during)
            reads = sum(c.kind != "write" for c in during)
            if writes >= DURING_PAUSE and reads >= DURING_PAUSE:
                self.enough_during_pause.set()

    async def writer(self, index: int) -> None:
        rng = random.Random(1000 + index)
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            delivery = Delivery(
                user=rng.choice(USERS),
                # Older and newer than the seeded changes: late deliveries during the rebuild too.
                event_time=1_700_000_000_000 + rng.randint(-100, 700) * 1000,
                items=[
                    ("Tag_Profile_IM_Nick", f"writer {index} #{sequence}"),
                    ("Tag_Profile_IM_Level", sequence),
                ],
                platform="Android",
            )
            started = time.monotonic()
            try:
                await post_delivery(self.http, delivery)
            except (AssertionError, httpx.HTTPError) as exc:
                self.record(Call("write", started, time.monotonic(), -1, False, repr(exc)))
            else:
                self.record(Call("write", started, time.monotonic(), 200, True))

    async def reader(self, index: int) -> None:
        rng = random.Random(2000 + index)
        while not self.stop.is_set():
            user = rng.choice(USERS)
            for kind, path, params in (
                ("profile", user_path(user), {}),
                ("history", user_path(user, "profile-history"), {"limit": 20}),
            ):
                started = time.monotonic()
                try:
                    status, body = await get_json(self.http, path, params)
                except (ValueError, httpx.HTTPError) as exc:
                    self.record(Call(kind, started, time.monotonic(), -1, False, repr(exc)))
                    continue
                filled = bool(body.get("profile")) if kind == "profile" else bool(body.get("entries"))
                self.record(
                    Call(kind, started, time.monotonic(), status, filled, "" if filled else repr(body))
                )


async def test_rebuild_while_writers_and_readers_hit_a_live_server(
    live_server: LiveServer, database_url: str
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rng = random.Random(2024)
        assert (
            await append(connection, random_deliveries(rng, USERS, SEEDED_EVENTS, time_span=600))
            == SEEDED_EVENTS
        )
        assert {r["user_id"] for r in await connection.fetch("SELECT DISTINCT user_id FROM events")} == set(
            USERS
        )

        async with httpx.AsyncClient(
            base_url=live_server.url, timeout=30, limits=httpx.Limits(max_connections=WRITERS + READERS + 4)
        ) as http:
            traffic = Traffic(http)
            workers = [asyncio.create_task(traffic.writer(i)) for i in range(WRITERS)]
            workers += [asyncio.create_task(traffic.reader(i)) for i in range(READERS)]

            last_phase = ("build", len(REGISTRY), len(REGISTRY))
            rebuild = ThreadedRebuild(database_url, pause_when=lambda *report: report == last_phase)
            rebuild.start()
            try:
                await rebuild.wait_paused()  # shadow tables built, nothing swapped
                traffic.pause_started = time.monotonic()  # only calls started from now on count
                # A hang guard only: the condition is met as soon as a few calls complete.
                await asyncio.wait_for(traffic.enough_during_pause.wait(), timeout=120)
            finally:
                rebuild.resume()
            report = await rebuild.result()
            traffic.stop.set()
            await asyncio.gather(*workers)

            calls = traffic.calls
            failures = [c for c in calls if c.status != 200]
            empty = [c for c in calls if c.status == 200 and not c.ok]
            assert failures == [], f"{len(failures)} of {len(calls)} calls failed, first: {failures[:3]}"
            assert empty == [], f"{len(empty)} empty answers, first: {empty[:3]}"

            within = [c for c in calls if c.started > rebuild.started_at and c.ended < rebuild.finished_at]
            assert sum(c.kind == "write" for c in within) >= DURING_PAUSE, (
                "writes completed during the rebuild"
            )
            assert sum(c.kind != "write" for c in within) >= DURING_PAUSE, (
                "reads completed during the rebuild"
            )
            assert report.last_position > rebuild.snapshot_position, (
                "appends after the snapshot were caught up"
            )
            assert sorted(report.projections) == sorted(REGISTRY)

            # Afterwards: every answer equals the pure fold of the whole log.
            assert (await http.get("/readyz")).status_code == 200
            fold = await fold_from_log(connection)
            users = fold_users(fold)
            assert len(users) == len(USERS)
            gate = asyncio.Semaphore(8)

            async def compare(sdkappid: int, user: str) -> None:
                async with gate:
                    assert await actual_answer(http, None, user) == expected_answer(fold, sdkappid, user), (
                        user
                    )

            await asyncio.gather(*(compare(sdkappid, user) for sdkappid, user in users))
            status, body = await get_json(http, user_path("load-0"), {"at": 1_700_000_000_000 + 300_000})
            assert (status, body.get("profile")) == (200, fold.profile(SDKAPPID, "load-0", 1_700_000_300_000))

        versions = await projection_versions(connection)
        assert {name: v[0] for name, v in versions.items()} == {p.name: p.version for p in REGISTRY.values()}
        assert all(v[1] == report.last_position for v in versions.values())
        assert await connection.fetchval("SELECT position FROM log_head") == SEEDED_EVENTS + sum(
            c.kind == "write" for c in calls
        ), "every accepted write is in the log once"
    finally:
        await connection.close()
