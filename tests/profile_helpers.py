"""Helpers for the read-API and rebuild tests: deliveries, seeding, whole-API snapshots, the pure fold.

Shared by tests/integration/test_read_api.py, tests/integration/test_rebuild.py and
tests/e2e/test_rebuild_under_load.py. Everything talks to a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import asyncpg

from app.config import asyncpg_dsn
from app.eventstore import EventStore
from app.ingest import NewEvent, decode_callback
from app.rebuild import RebuildReport, rebuild_projections
from tests.conftest import AUTH, SDKAPPID, wait_for_a_lock_wait
from tests.reference import PORTRAIT_SET, LoggedEvent, ReferenceFold

# --- deliveries -------------------------------------------------------------------------------

Items = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class Delivery:
    """One `Profile.CallbackPortraitSet` delivery: who, when, by whom, from where, what."""

    user: str
    event_time: int
    items: Items
    operator: str | None = None  # None: the user themself
    sdkappid: int = SDKAPPID
    platform: str = "iOS"
    client_ip: str = "203.0.113.9"

    def query(self) -> dict[str, str]:
        return {
            "SdkAppid": str(self.sdkappid),
            "CallbackCommand": PORTRAIT_SET,
            "contenttype": "json",
            "ClientIP": self.client_ip,
            "OptPlatform": self.platform,
        }

    def body(self) -> dict[str, Any]:
        return {
            "CallbackCommand": PORTRAIT_SET,
            "Operator_Account": self.user if self.operator is None else self.operator,
            "From_Account": self.user,
            "EventTime": self.event_time,
            "ProfileItem": [{"Tag": tag, "Value": value} for tag, value in self.items],
        }

    def event(self, received_at: datetime | None = None) -> NewEvent:
        """The event the endpoint would append for this delivery (same validation and digests)."""
        raw = json.dumps(self.body(), ensure_ascii=False).encode()
        return decode_callback(
            self.query(), raw, sdkappid=self.sdkappid, received_at=received_at or datetime.now(UTC)
        )


class HttpClient(Protocol):
    """What the tests need of httpx.AsyncClient and Litestar's AsyncTestClient."""

    async def get(self, url: str, **kwargs: Any) -> Any: ...

    async def post(self, url: str, **kwargs: Any) -> Any: ...


async def post_delivery(client: HttpClient, delivery: Delivery) -> None:
    """POST /callback; the delivery must be accepted."""
    reply = await client.post(
        "/callback",
        params=delivery.query(),
        content=json.dumps(delivery.body(), ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}


async def append(
    connection: asyncpg.Connection[Any], deliveries: Iterable[Delivery], batch: int = 1000
) -> int:
    """Append deliveries straight through the event store (as the group committer does); returns how many."""
    store = EventStore()
    events = [d.event() for d in deliveries]
    for start in range(0, len(events), batch):
        await store.insert_events(connection, events[start : start + batch])
    return len(events)


def random_deliveries(
    rng: random.Random,
    users: Sequence[str],
    count: int,
    *,
    tags: Sequence[str] = ("Tag_Profile_IM_Nick", "Tag_Profile_IM_Level", "Tag_Profile_Custom_Team"),
    sdkappids: Sequence[int] = (SDKAPPID,),
    time_span: int = 50,
) -> list[Delivery]:
    """`count` distinct deliveries in arrival order: EventTimes in a narrow span (many ties, many
    late deliveries), mixed operators and platforms, string and integer values."""
    seen: set[str] = set()
    result: list[Delivery] = []
    while len(result) < count:
        chosen = rng.sample(list(tags), rng.randint(1, len(tags)))
        items = [
            (
                tag,
                rng.randint(0, 2**32 - 1) if tag.endswith("Level") else f"{tag[-4:]}-{rng.randint(0, 10**6)}",
            )
            for tag in chosen
        ]
        delivery = Delivery(
            user=rng.choice(list(users)),
            event_time=1_700_000_000_000 + rng.randint(0, time_span) * 1000,
            items=items,
            operator=rng.choice([None, None, "administrator"]),
            sdkappid=rng.choice(list(sdkappids)),
            platform=rng.choice(["iOS", "Android", "RESTAPI", "Web"]),
            client_ip=rng.choice(["203.0.113.7", "2001:db8::1", "10.0.0.2"]),
        )
        key = json.dumps([delivery.sdkappid, delivery.body()], sort_keys=True)
        if key not in seen:
            seen.add(key)
            result.append(delivery)
    return result


# --- reading the API --------------------------------------------------------------------------


def user_path(user: str, endpoint: str = "profile") -> str:
    """`/users/<id>/<endpoint>` with the id percent-encoded; dots too, or clients drop `..` segments."""
    return "/users/" + quote(user, safe="").replace(".", "%2E") + "/" + endpoint


def app_params(sdkappid: int | None, **params: Any) -> dict[str, Any]:
    """Query parameters, with `sdkappid` unless None (one configured app)."""
    return params if sdkappid is None else {"sdkappid": sdkappid, **params}


async def get_json(client: HttpClient, url: str, params: dict[str, Any]) -> tuple[int, Any]:
    reply = await client.get(url, params=params, headers=AUTH)
    return reply.status_code, reply.json()


async def full_history(
    client: HttpClient, sdkappid: int | None, user: str, *, page_size: int = 500, **filters: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every history page (the whole replies) and their entries concatenated, walking `next_cursor`."""
    pages: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = app_params(sdkappid, limit=page_size, **filters)
        if cursor is not None:
            params["cursor"] = cursor
        status, page = await get_json(client, user_path(user, "profile-history"), params)
        assert status == 200, page
        assert len(page["entries"]) <= page_size
        pages.append(page)
        entries.extend(page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages, entries
        assert len(page["entries"]) == page_size, "a page before the last one is full"


async def api_snapshot(
    client: HttpClient,
    users: Iterable[tuple[int, str]],
    *,
    at_times: Sequence[int] = (),
    page_size: int = 7,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    """Every answer the read API gives about these users, verbatim (status and body)."""
    snapshot: dict[str, Any] = {}
    for sdkappid, user in users:
        key = f"{sdkappid}/{user}"
        answers: dict[str, Any] = {"profile": await get_json(client, user_path(user), app_params(sdkappid))}
        for at in at_times:
            answers[f"at {at}"] = await get_json(client, user_path(user), app_params(sdkappid, at=at))
        answers["history"] = (await full_history(client, sdkappid, user, page_size=page_size))[0]
        for tag in tags:
            answers[f"history tag {tag}"] = (
                await full_history(client, sdkappid, user, page_size=page_size, tag=tag)
            )[0]
        snapshot[key] = answers
    return snapshot


# --- the pure fold ----------------------------------------------------------------------------


async def fold_from_log(connection: asyncpg.Connection[Any]) -> ReferenceFold:
    """tests/reference.py's ReferenceFold over every profile change in the events table."""
    rows = await connection.fetch(
        "SELECT position, sdkappid, user_id, event_time, body FROM events"
        " WHERE command = $1 ORDER BY position",
        PORTRAIT_SET,
    )
    fold = ReferenceFold()
    for row in rows:
        doc = json.loads(row["body"])
        fold.add(
            LoggedEvent(
                position=row["position"],
                sdkappid=row["sdkappid"],
                user_id=row["user_id"],
                event_time=row["event_time"],
                operator=doc["Operator_Account"],
                items=[(item["Tag"], item["Value"]) for item in doc["ProfileItem"]],
            )
        )
    return fold


def fold_users(fold: ReferenceFold) -> list[tuple[int, str]]:
    return sorted({(e.sdkappid, e.user_id) for e in fold.events})


def expected_answer(fold: ReferenceFold, sdkappid: int, user: str) -> dict[str, Any]:
    """What the API must say about a user, from the fold: profile, version, history."""
    return {
        "profile": fold.profile(sdkappid, user),
        "version": sum(1 for e in fold.events if (e.sdkappid, e.user_id) == (sdkappid, user)),
        "history": [
            (position, [list(c) for c in changes]) for position, changes in fold.history(sdkappid, user)
        ],
    }


async def actual_answer(client: HttpClient, sdkappid: int | None, user: str) -> dict[str, Any]:
    """The same shape, from the API."""
    status, profile = await get_json(client, user_path(user), app_params(sdkappid))
    assert status == 200, profile
    _pages, entries = await full_history(client, sdkappid, user)
    return {
        "profile": profile["profile"],
        "version": profile["version"],
        "history": [
            (e["position"], sorted([c["tag"], c["old"], c["new"]] for c in e["changes"])) for e in entries
        ],
    }


# --- catalog and table state ------------------------------------------------------------------

PROJECTION_TABLES = ("profiles", "profile_changes")


async def catalog(connection: asyncpg.Connection[Any]) -> dict[str, Any]:
    """Indexes, constraints and columns of the projection tables, by name."""
    indexes = await connection.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'public' AND tablename = ANY($1::text[]) ORDER BY 1, 2",
        list(PROJECTION_TABLES),
    )
    constraints = await connection.fetch(
        "SELECT conrelid::regclass::text AS t, conname, contype::text AS contype,"
        "       pg_get_constraintdef(oid) AS definition"
        "  FROM pg_constraint WHERE conrelid = ANY($1::regclass[]) ORDER BY 1, 2",
        list(PROJECTION_TABLES),
    )
    # Columns in order; their numbers (ordinal_position) skip dropped columns until a rebuild.
    columns = await connection.fetch(
        "SELECT table_name, rank() OVER (PARTITION BY table_name ORDER BY ordinal_position),"
        "       column_name, data_type, is_nullable, column_default"
        "  FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = ANY($1::text[]) ORDER BY 1, 2",
        list(PROJECTION_TABLES),
    )
    return {
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
        "columns": [tuple(r) for r in columns],
    }


async def leftover_tables(connection: asyncpg.Connection[Any]) -> list[str]:
    """Shadow, staging or replaced relations a rebuild left behind."""
    rows = await connection.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_shadow%' OR relname LIKE '%\\_\\_retired%'"
        " OR relname LIKE 'profile\\_items\\_\\_%' ORDER BY 1"
    )
    return [r["relname"] for r in rows]


async def table_rows(connection: asyncpg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """Every row of a projection table (a fixed name), in a stable order, jsonb as text."""
    if table == "profiles":
        sql = (
            "SELECT sdkappid, user_id, tag, value::text, event_time, position FROM profiles"
            " ORDER BY sdkappid, user_id, tag"
        )
    else:
        sql = (
            "SELECT sdkappid, user_id, position, tag, event_time, received_at, operator_account,"
            " opt_platform, client_ip, new::text FROM profile_changes ORDER BY position, tag"
        )
    return [tuple(r) for r in await connection.fetch(sql)]


async def physical_identity(connection: asyncpg.Connection[Any], table: str) -> tuple[Any, ...]:
    """The table's oid and file, and every row's ctid and xmin: equal means not rewritten or touched."""
    oid = await connection.fetchval("SELECT oid FROM pg_class WHERE relname = $1 AND relkind = 'r'", table)
    node = await connection.fetchval("SELECT pg_relation_filenode($1::regclass)", table)
    rows = await connection.fetch(f"SELECT ctid::text, xmin::text FROM {table} ORDER BY ctid")
    return oid, node, [tuple(r) for r in rows]


async def projection_versions(connection: asyncpg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    rows = await connection.fetch("SELECT name, version, last_position, rebuilt_at FROM projection_versions")
    return {r["name"]: (r["version"], r["last_position"], r["rebuilt_at"]) for r in rows}


# --- a rebuild in another thread, paused at a chosen point ------------------------------------


@dataclass
class ThreadedRebuild:
    """`rebuild_projections` on its own connection and event loop in a thread.

    `pause_when(phase, done, total)` picks one progress report at which the rebuild stops until
    `resume()` (or, with `fail_on_resume`, raises there as a crashed run would). This turns
    "while a rebuild is running" into a fixed point of the test instead of a race.
    """

    database_url: str
    names: Sequence[str] = ()
    pause_when: Callable[[str, int, int], bool] | None = None
    fail_on_resume: bool = False
    phases: list[tuple[str, int, int]] = field(default_factory=list)
    server_pid: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    _paused: threading.Event = field(default_factory=threading.Event)
    _resume: threading.Event = field(default_factory=threading.Event)
    _task: asyncio.Future[RebuildReport] | None = None

    def _progress(self, phase: str, done: int, total: int) -> None:
        self.phases.append((phase, done, total))
        if self.pause_when is not None and not self._paused.is_set() and self.pause_when(phase, done, total):
            self._paused.set()
            # A hang guard only: the test resumes the rebuild as soon as its condition holds.
            if not self._resume.wait(timeout=120):
                raise TimeoutError("the test never resumed the rebuild")
            if self.fail_on_resume:
                raise RuntimeError(f"rebuild interrupted at {phase} {done}/{total}")

    async def _rebuild(self) -> RebuildReport:
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        self.server_pid = connection.get_server_pid()
        try:
            self.started_at = time.monotonic()
            try:
                return await rebuild_projections(connection, self.names, progress=self._progress)
            finally:
                self.finished_at = time.monotonic()
        finally:
            if not connection.is_closed():
                await connection.close()

    def start(self) -> None:
        self._task = asyncio.ensure_future(asyncio.to_thread(lambda: asyncio.run(self._rebuild())))

    async def wait_paused(self) -> None:
        """Until the rebuild reached its pause point (fails if the rebuild ends first)."""
        assert self._task is not None
        waiter = asyncio.ensure_future(asyncio.to_thread(self._paused.wait, 120))
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            self._paused.set()  # ends the waiter thread
            await waiter
            self._task.result()  # raises the rebuild's error, if any
            raise AssertionError(f"the rebuild finished without reaching its pause point: {self.phases}")
        assert waiter.result(), "the rebuild did not reach its pause point"

    def resume(self) -> None:
        self._resume.set()

    async def wait_for_lock(self, connection: asyncpg.Connection[Any]) -> None:
        """Until the rebuild's session waits for a lock (polled on `connection`)."""
        while self.server_pid is None:  # set as soon as the rebuild has connected
            assert self._task is not None and not self._task.done(), "the rebuild ended unconnected"
            await asyncio.sleep(0.01)
        await wait_for_a_lock_wait(connection, self.server_pid)

    async def result(self) -> RebuildReport:
        assert self._task is not None
        return await self._task

    @property
    def snapshot_position(self) -> int:
        """The log head the bulk replay read up to (the total of the replay phase)."""
        return next(total for phase, _done, total in self.phases if phase == "replay")
