"""Durable appends without HTTP: pyeventsourcing's PostgreSQL recorder against our append path.

Every variant appends one event per call from N concurrent appenders to a fresh database on the
same server (fsync and synchronous_commit as the server has them) for the same measured window.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]  # no stubs in the venv

from app.config import asyncpg_dsn
from app.eventstore import EventStore
from app.groupcommit import GroupCommitter
from app.ingest import NewEvent, canonical_json, decode_callback
from bench.cpu import CpuMeter, tree
from bench.logdata import BASE_EVENT_TIME_MS, SDKAPPID, make_event, user_name

TOPIC = "profile_audit_bench.events:ProfileChanged"
NAMESPACE = uuid.UUID("6f1c2d3e-0000-4000-8000-00000000be9c")


@dataclass(frozen=True)
class AppendRun:
    """One variant's measured window."""

    name: str
    title: str
    appenders: int
    appends: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_cores: dict[str, float]
    stored: int

    @property
    def rate(self) -> float:
        """Committed appends per second."""
        return self.appends / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Window:
    """Warm-up until `measure_from`, measured until `stop_at` (time.monotonic())."""

    measure_from: float
    stop_at: float

    @classmethod
    def starting_now(cls, warmup: float, duration: float) -> Window:
        """A window opening after `warmup` seconds from now."""
        now = time.monotonic()
        return cls(now + warmup, now + warmup + duration)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Deliveries:
    """The same deliveries as the generated log: appender `index` owns users index, index+N, …"""

    def __init__(self, index: int, appenders: int, users: int) -> None:
        self.rng = random.Random(index)
        self.users = range(index, users, appenders)
        self.versions: dict[int, int] = {}
        self.count = 0
        self.index = index

    def next(self) -> tuple[str, int, bytes, dict[str, str]]:
        """(user name, the user's version, canonical body, query metadata)."""
        self.count += 1
        user = self.users[self.rng.randrange(len(self.users))]
        version = self.versions.get(user, 0) + 1
        self.versions[user] = version
        name = user_name(user)
        event_time = BASE_EVENT_TIME_MS + self.index * 10_000_000 + self.count
        document, metadata, _ = make_event(self.rng, self.count, name, event_time)
        return name, version, canonical_json(document), metadata


def _meter(postmaster_pid: int | None) -> CpuMeter:
    me = psutil.Process()
    return CpuMeter(
        {"client": lambda: [me], "postgres": lambda: tree(postmaster_pid) if postmaster_pid else []}
    )


def run_eventsourcing(
    url: str, appenders: int, warmup: float, duration: float, users: int, postmaster_pid: int | None
) -> AppendRun:
    """PostgresApplicationRecorder.insert_events([one event]) from `appenders` threads."""
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(asyncpg_dsn(url))
    datastore = PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", "5432")),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        pool_size=appenders,
        max_overflow=0,
        connect_timeout=60,
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    latencies: list[list[float]] = [[] for _ in range(appenders)]
    # Open the pool once, every connection up before the clock starts. (Passing pool_open_timeout
    # instead makes each get_connection() call pool.open(wait=True), which asserts when threads race.)
    datastore.pool.open(wait=True, timeout=60)
    window = Window.starting_now(warmup, duration)
    failures: list[BaseException] = []

    def appender(index: int) -> None:
        deliveries, mine = Deliveries(index, appenders, users), latencies[index]
        try:
            while (started := time.monotonic()) < window.stop_at:
                name, version, body, _ = deliveries.next()
                event = StoredEvent(uuid.uuid5(NAMESPACE, name), version, TOPIC, body)
                recorder.insert_events([event])
                if started >= window.measure_from and (ended := time.monotonic()) <= window.stop_at:
                    mine.append(ended - started)
        except BaseException as exc:
            failures.append(exc)
            raise

    meter = _meter(postmaster_pid)
    threads = [threading.Thread(target=appender, args=(i,), daemon=True) for i in range(appenders)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window.measure_from - time.monotonic()))
    meter.start()
    time.sleep(max(0.0, window.stop_at - time.monotonic()))
    cpu = meter.stop(window.stop_at - window.measure_from, children_label="children")
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} eventsourcing appenders failed: {failures[0]!r}")
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("SELECT count(*) AS n FROM stored_events")
        row = cursor.fetchone()
        stored = int(row["n"]) if row else 0
    datastore.close()
    flat = [x for per in latencies for x in per]
    return AppendRun(
        "eventsourcing",
        f"eventsourcing PostgresApplicationRecorder.insert_events, {appenders} threads",
        appenders,
        len(flat),
        duration,
        1000 * _percentile(flat, 0.5),
        1000 * _percentile(flat, 0.99),
        cpu,
        stored,
    )


Append = Callable[[int, NewEvent], Awaitable[object]]


async def _drive(
    appenders: int, users: int, window: Window, append: Append, postmaster_pid: int | None
) -> tuple[list[float], dict[str, float]]:
    latencies: list[float] = []

    async def appender(index: int) -> None:
        deliveries = Deliveries(index, appenders, users)
        while (started := time.monotonic()) < window.stop_at:
            _, _, body, metadata = deliveries.next()
            query = {k: v for k, v in metadata.items() if k != "peer"}
            event = decode_callback(
                query, body, sdkappid=SDKAPPID, received_at=datetime.now(UTC), peer=metadata["peer"]
            )
            await append(index, event)
            if started >= window.measure_from and (ended := time.monotonic()) <= window.stop_at:
                latencies.append(ended - started)

    meter = _meter(postmaster_pid)

    async def clock() -> dict[str, float]:
        await asyncio.sleep(max(0.0, window.measure_from - time.monotonic()))
        meter.start()
        await asyncio.sleep(max(0.0, window.stop_at - time.monotonic()))
        return meter.stop(window.stop_at - window.measure_from, children_label="children")

    clocked = asyncio.create_task(clock())
    await asyncio.gather(*(appender(i) for i in range(appenders)))
    return latencies, await clocked


async def _ours(
    url: str, appenders: int, warmup: float, duration: float, users: int, grouped: bool, pid: int | None
) -> AppendRun:
    dsn = asyncpg_dsn(url)
    store = EventStore()
    connections: list[asyncpg.Connection[Any]] = []
    committer: GroupCommitter | None = None
    if grouped:
        committer = GroupCommitter(dsn, store=store)
        await committer.start()

        async def append(index: int, event: NewEvent) -> object:
            assert committer is not None
            return await committer.append(event)
    else:
        connections = [await asyncpg.connect(dsn) for _ in range(appenders)]

        async def append(index: int, event: NewEvent) -> object:
            return await store.insert_events(connections[index], [event])

    try:
        window = Window.starting_now(warmup, duration)
        latencies, cpu = await _drive(appenders, users, window, append, pid)
    finally:
        if committer is not None:
            await committer.stop()
        for connection in connections:
            await connection.close()
    check = await asyncpg.connect(dsn)
    try:
        stored = int(await check.fetchval("SELECT count(*) FROM events"))
    finally:
        await check.close()
    name, title = (
        ("ours-group", f"our GroupCommitter.append (group commit, 1 process), {appenders} tasks")
        if grouped
        else ("ours-single", f"our append_events, one event per commit, {appenders} connections")
    )
    return AppendRun(
        name,
        title,
        appenders,
        len(latencies),
        duration,
        1000 * _percentile(latencies, 0.5),
        1000 * _percentile(latencies, 0.99),
        cpu,
        stored,
    )


def run_ours(
    url: str,
    appenders: int,
    warmup: float,
    duration: float,
    users: int,
    postmaster_pid: int | None,
    *,
    grouped: bool,
) -> AppendRun:
    """Our append path without HTTP: one event per append_events call, or through the group committer."""
    return asyncio.run(_ours(url, appenders, warmup, duration, users, grouped, postmaster_pid))
