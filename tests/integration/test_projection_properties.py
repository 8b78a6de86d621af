"""Inline projections, rebuilt projections and a pure fold of the log give the same answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from unittest.mock import patch
from urllib.parse import quote

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from app import rebuild as rebuild_module
from app.app import create_app
from app.config import asyncpg_dsn
from app.eventstore import EventStore
from app.ingest import decode_callback
from app.rebuild import rebuild_projections
from app.verify import verify_projections
from tests.conftest import AUTH, SDKAPPID, make_settings
from tests.profile_helpers import ThreadedRebuild, fold_from_log
from tests.reference import ReferenceFold

USERS = ["alice", "bob/1"]
TAGS = ["Tag_Profile_IM_Nick", "Tag_Profile_IM_Level", "Tag_Profile_Custom_X"]
QUERY = {"SdkAppid": str(SDKAPPID), "CallbackCommand": "Profile.CallbackPortraitSet", "OptPlatform": "iOS"}

# U+0000 is refused by the endpoint (PostgreSQL's JSON cannot hold it): tested elsewhere.
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=6)
values = st.one_of(st.integers(0, 2**32 - 1), text)
items = st.lists(st.tuples(st.sampled_from(TAGS), values), min_size=1, max_size=3)
FILTERS = [("operator", "admin"), ("tag", "Tag_Profile_IM_Nick")]
delivery = st.tuples(st.sampled_from(USERS), st.integers(0, 12), st.sampled_from(["op", "admin"]), items)


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, int, str, list[tuple[str, Any]]]]:
    """Deliveries in a random arrival order, some repeated."""
    base = draw(st.lists(delivery, min_size=1, max_size=12))
    repeats = draw(st.lists(st.sampled_from(base), max_size=3))
    return draw(st.permutations(base + repeats))


def body(user: str, event_time: int, operator: str, changed: list[tuple[str, Any]]) -> dict[str, Any]:
    return {
        "CallbackCommand": "Profile.CallbackPortraitSet",
        "Operator_Account": operator,
        "From_Account": user,
        "EventTime": event_time,
        "ProfileItem": [{"Tag": t, "Value": v} for t, v in changed],
    }


async def read_answers(client: AsyncTestClient[Any], users: list[str]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for user in users:
        path = "/users/" + quote(user, safe="")
        current = await client.get(path + "/profile", headers=AUTH, params={"sdkappid": SDKAPPID})
        as_of = {}
        for at in (0, 3, 6, 9, 12):
            r = await client.get(path + "/profile", headers=AUTH, params={"sdkappid": SDKAPPID, "at": at})
            as_of[at] = r.json()["profile"] if r.status_code == 200 else None
        answers[user] = {
            "profile": current.json()["profile"] if current.status_code == 200 else None,
            "as_of": as_of,
            "history": await read_history(client, path, {}),
            # A filter picks changes; each one's old is still that tag's previous value.
            **{
                f"history by {name}={value}": await read_history(client, path, {name: value})
                for name, value in FILTERS
            },
        }
    return answers


async def read_history(client: AsyncTestClient[Any], path: str, filters: dict[str, str]) -> list[Any]:
    """Every page of the user's history (two events per page) with the filters."""
    history = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sdkappid": SDKAPPID, "limit": 2, **filters}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(path + "/profile-history", headers=AUTH, params=params)).json()
        history += [
            (e["position"], sorted((c["tag"], c["old"], c["new"]) for c in e["changes"]))
            for e in page["entries"]
        ]
        cursor = page["next_cursor"]
        if cursor is None:
            return history


def reference_answers(fold: ReferenceFold, users: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for user in users:
        profile = fold.profile(SDKAPPID, user)
        history = [(p, [tuple(c) for c in changes]) for p, changes in fold.history(SDKAPPID, user)]
        operators = {e.position: e.operator for e in fold.events}
        filtered = {}
        for name, value in FILTERS:
            if name == "operator":
                filtered[f"history by {name}={value}"] = [(p, c) for p, c in history if operators[p] == value]
            else:
                kept = [(p, [c for c in changes if c[0] == value]) for p, changes in history]
                filtered[f"history by {name}={value}"] = [(p, c) for p, c in kept if c]
        result[user] = {
            "profile": profile or None,
            "as_of": {at: fold.profile(SDKAPPID, user, at) or None for at in (0, 3, 6, 9, 12)},
            "history": history,
            **filtered,
        }
    return result


async def append_in_batches(
    database_url: str, deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]], cuts: list[int]
) -> None:
    """Append the deliveries straight through the event store, in batches split at `cuts`."""
    received = datetime.now(UTC)
    events = [
        decode_callback(
            QUERY,
            json.dumps(body(user, event_time, operator, changed)).encode(),
            sdkappid=SDKAPPID,
            received_at=received,
        )
        for user, event_time, operator, changed in deliveries
    ]
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(events))), len(events)]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for low, high in itertools.pairwise(bounds):
            await EventStore().insert_events(connection, events[low:high])
    finally:
        await connection.close()


async def run_scenario(
    database_url: str,
    deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]],
    cuts: list[int] | None = None,
) -> None:
    """Deliver over HTTP one by one (cuts None) or append in batches; then compare answers."""
    prefix = uuid.uuid4().hex[:8] + ":"
    users = sorted({prefix + user for user, *_ in deliveries})
    deliveries = [(prefix + user, t, o, c) for user, t, o, c in deliveries]
    if cuts is not None:
        await append_in_batches(database_url, deliveries, cuts)
    app = create_app(make_settings(database_url, sdkappids=(SDKAPPID,)))
    async with AsyncTestClient(app=app) as client:
        for user, event_time, operator, changed in deliveries if cuts is None else []:
            r = await client.post("/callback", params=QUERY, json=body(user, event_time, operator, changed))
            assert r.status_code == 200, r.text

        connection = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            fold = await fold_from_log(connection)
            stored = [e for e in fold.events if e.user_id in set(users)]
            distinct = {(u, t, o, tuple(c)) for u, t, o, c in deliveries}
            assert len(stored) == len(distinct), "each distinct delivery is stored exactly once"
            expected = reference_answers(fold, users)

            assert await read_answers(client, users) == expected, "inline projections"
            # Where the answers equal the pure fold, the projection check finds no row to report.
            checks = (await verify_projections(connection))[1]
            assert [c.name for c in checks if not c.matches] == [], checks
            await rebuild_projections(connection)
            assert await read_answers(client, users) == expected, "rebuilt projections"
        finally:
            await connection.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries=scenarios())
def test_inline_rebuilt_and_reference_agree(
    database_url: str, deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]]
) -> None:
    asyncio.run(run_scenario(database_url, deliveries))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries=scenarios(), cuts=st.lists(st.integers(1, 14), max_size=3))
def test_batched_appends_agree_with_the_fold(
    database_url: str, deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]], cuts: list[int]
) -> None:
    """Group commit appends many deliveries at once: late ones inside a batch must fold right."""
    asyncio.run(run_scenario(database_url, deliveries, cuts))


async def run_rebuild_with_tail(
    database_url: str,
    deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]],
    split: int,
    rounds: bool,
    names: tuple[str, ...] = (),
) -> None:
    """Append up to `split`, rebuild `names`, and append the rest while the shadow tables stand built."""
    prefix = uuid.uuid4().hex[:8] + ":"
    users = sorted({prefix + user for user, *_ in deliveries})
    deliveries = [(prefix + user, t, o, c) for user, t, o, c in deliveries]
    await append_in_batches(database_url, deliveries[:split], [])
    rebuild = ThreadedRebuild(
        database_url, names, pause_when=lambda phase, done, total: phase == "build" and done == total
    )
    # LOCKED_TAIL 0: every event of the tail is caught up in a round before the swap.
    with patch.object(rebuild_module, "LOCKED_TAIL", 0 if rounds else rebuild_module.LOCKED_TAIL):
        rebuild.start()
        await rebuild.wait_paused()
        connection = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            snapshot = await connection.fetchval("SELECT position FROM log_head")
            await append_in_batches(database_url, deliveries[split:], [])
            head = await connection.fetchval("SELECT position FROM log_head")
            rebuild.resume()
            report = await rebuild.result()
            assert report.last_position == head
            assert report.events_caught_up_under_lock == (0 if rounds else head - snapshot)
            fold = await fold_from_log(connection)
        finally:
            await connection.close()
    app = create_app(make_settings(database_url, sdkappids=(SDKAPPID,)))
    async with AsyncTestClient(app=app) as client:
        assert await read_answers(client, users) == reference_answers(fold, users), "caught-up projections"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    deliveries=scenarios(),
    data=st.data(),
    rounds=st.booleans(),
    names=st.sampled_from([(), ("profiles",), ("profile_changes",)]),
)
@example(
    deliveries=[
        ("alice", 10, "op", [("Tag_Profile_IM_Nick", "new")]),
        ("alice", 5, "op", [("Tag_Profile_IM_Nick", "old")]),
    ],
    data=None,
    rounds=True,
    names=("profiles",),
)
def test_a_rebuild_catches_up_on_deliveries_made_while_it_ran(
    database_url: str,
    deliveries: list[tuple[str, int, str, list[tuple[str, Any]]]],
    data: st.DataObject | None,
    rounds: bool,
    names: tuple[str, ...],
) -> None:
    """Late deliveries and ties in the tail must fold as they do inline, in rounds or in the swap."""
    split = 1 if data is None else data.draw(st.integers(0, len(deliveries)), label="split")
    asyncio.run(run_rebuild_with_tail(database_url, deliveries, split, rounds, names))
