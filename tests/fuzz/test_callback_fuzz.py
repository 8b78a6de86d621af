"""Fuzzing `POST /callback` over HTTP with a real database: whatever arrives, nothing is half-stored.

Arbitrary query strings, arbitrary JSON and non-JSON bodies, unicode everywhere, ProfileItem arrays
of thousands of items just under the body limit, and arrays nested 10,000 deep. After every example:

- the reply is 200 with the OK body or a 4xx with the FAIL body, never a 5xx;
- a 200 is backed by exactly one event whose stored payload is the delivery's canonical body
  (same JSON content), new or already there (a redelivery); nothing else changed;
- a 4xx left `events` (and the log head) unchanged;
- `rejected_deliveries` grew by exactly one row, holding the raw bytes, exactly when the delivery was
  authenticated, within the size limit and refused as invalid (400); by none otherwise;
- where the contract decides (well-formed deliveries, non-objects, bad UTF-8, oversized bodies,
  unauthenticated deliveries), the status is the one it names;
- the hash chain still verifies.

The oracle below is written from the contract (README, shared/spec), not from app/ingest.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.ingest import canonical_json, expected_sign
from app.verify import verify_log
from tests.conftest import (
    AUTH,
    OK_REPLY,
    OTHER_SDKAPPID,
    SDKAPPID,
    is_fail_reply,
    make_settings,
    portrait_query,
)

pytestmark = pytest.mark.fuzz

PORTRAIT = "Profile.CallbackPortraitSet"
CONFIGURED = {SDKAPPID, OTHER_SDKAPPID}
MAX_BODY = 64 * 1024
MAX_KEY_BYTES = 1024  # From_Account and Tag: longer ones are refused (README, "HTTP")
INT64_MAX = 2**63 - 1
TOKEN = "fuzz-callback-token"

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one app and database for all examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# --- strategies -------------------------------------------------------------------------------

# Any text, NUL and lone surrogates included (both must be refused, never stored half-way).
any_text = st.text(max_size=24)
# Text a valid delivery may carry: no NUL (refused by design), no lone surrogates (not UTF-8).
clean_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=24)
clean_key = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=24
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
    st.sampled_from([PORTRAIT, "State.StateChange", "", "\x00", "\\u0000", "😀", "\u202e"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=5)),
    max_leaves=30,
)
clean_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=False, allow_infinity=False),
        clean_text,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(clean_text, inner, max_size=4)),
    max_leaves=20,
)
profile_values = st.one_of(clean_text, st.integers(min_value=-(2**70), max_value=2**70))


@st.composite
def encodings(draw: st.DrawFn) -> Callable[[Any], bytes]:
    """One way a sender might serialise JSON: key order, whitespace and escaping vary."""
    ascii_only = draw(st.booleans())
    indent = draw(st.sampled_from([None, 0, 2, "\t"]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    sort_keys = draw(st.booleans())

    def encode(document: Any) -> bytes:
        text = json.dumps(
            document, ensure_ascii=ascii_only, indent=indent, separators=separators, sort_keys=sort_keys
        )
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8

    return encode


@st.composite
def portrait_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed Profile.CallbackPortraitSet with arbitrary unicode and extra fields."""
    body: dict[str, Any] = {
        "CallbackCommand": PORTRAIT,
        "Operator_Account": draw(clean_text),
        "From_Account": draw(clean_key),
        "EventTime": draw(st.integers(min_value=0, max_value=INT64_MAX)),
        "ProfileItem": draw(
            st.lists(
                st.fixed_dictionaries({"Tag": clean_key, "Value": profile_values}),
                max_size=6,
            )
        ),
    }
    body.update(draw(st.dictionaries(clean_text, clean_json_values, max_size=2)))
    body["CallbackCommand"] = PORTRAIT
    return body


@st.composite
def huge_portrait_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Thousands of ProfileItems, filled up to just under the body limit."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    distinct_tags = draw(st.sampled_from([1, 10, 300, 5000]))  # 5000: every tag distinct
    tags = [f"Tag_Profile_Custom_{i:x}" for i in range(distinct_tags)]
    body: dict[str, Any] = {
        "CallbackCommand": PORTRAIT,
        "Operator_Account": "admin",
        "From_Account": f"huge-{rng.getrandbits(48):x}",
        "EventTime": draw(st.integers(min_value=0, max_value=INT64_MAX)),
        "ProfileItem": [],
    }
    budget = MAX_BODY - len(json.dumps(body, separators=(",", ":")).encode()) - 16
    items: list[dict[str, Any]] = body["ProfileItem"]
    while True:
        value: str | int = rng.choice([rng.randrange(2**32), "v", "值🌸" * rng.randrange(4)])
        item = {"Tag": rng.choice(tags), "Value": value}
        size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if size > budget:
            return body
        items.append(item)
        budget -= size


@st.composite
def other_commands(draw: st.DrawFn) -> dict[str, Any]:
    """Any other callback command: accepted and recorded, whatever else the body holds."""
    body = draw(st.dictionaries(clean_text, clean_json_values, max_size=6))
    body["CallbackCommand"] = draw(
        st.one_of(
            st.sampled_from(["State.StateChange", "Sns.CallbackFriendAdd", "C2C.CallbackAfterSendMsg"]),
            clean_key,
        )
    )
    return body


@st.composite
def mutated_portrait_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A portrait set with fields replaced, dropped or added: mostly invalid."""
    body = draw(portrait_sets())
    fields = ["CallbackCommand", "Operator_Account", "From_Account", "EventTime", "ProfileItem"]
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(fields))
        action = draw(st.sampled_from(["replace", "drop", "items"]))
        if action == "replace":
            body[field] = draw(json_values)
        elif action == "drop":
            body.pop(field, None)
        else:
            body["ProfileItem"] = draw(
                st.lists(st.dictionaries(st.sampled_from(["Tag", "Value", "X"]), json_values), max_size=4)
            )
    return body


@st.composite
def long_keys(draw: st.DrawFn) -> dict[str, Any]:
    """A From_Account or a Tag around the key limit, in 1- to 4-byte characters."""
    body = draw(portrait_sets())
    alphabet = draw(st.sampled_from(["a", "é", "值", "😀", "a值😀"]))
    size = draw(st.integers(200, 4000))
    key = "".join(random.Random(size).choice(alphabet) for _ in range(size))
    if draw(st.booleans()):
        body["From_Account"] = key
    else:
        body["ProfileItem"] = [*body["ProfileItem"], {"Tag": key, "Value": "x"}]
    return body


def nested(depth: int, kind: str) -> bytes:
    inner = b"[" * depth + b"]" * depth if kind == "arrays" else b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "bare":
        return b"[" * depth + b"]" * depth
    return b'{"CallbackCommand":"Deep.Nesting","deep":' + inner + b"}"


deep_bodies = st.builds(
    nested,
    st.sampled_from([10, 100, 500, 900, 1000, 2000, 10_000]),
    st.sampled_from(["arrays", "objects", "bare"]),
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    document = draw(
        st.one_of(
            portrait_sets(),
            portrait_sets(),
            other_commands(),
            mutated_portrait_sets(),
            long_keys(),
            json_values,
        )
    )
    return draw(encodings())(document)


@st.composite
def damaged_bodies(draw: st.DrawFn) -> bytes:
    """A valid delivery truncated, spliced with garbage, BOM-prefixed or padded past the limit."""
    raw = draw(encodings())(draw(portrait_sets()))
    how = draw(st.sampled_from(["truncate", "splice", "bom", "oversize", "control"]))
    at = draw(st.integers(0, len(raw)))
    if how == "truncate":
        return raw[:at]
    if how == "splice":
        return raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "control":
        return raw.replace(b'"From_Account"', b'"From\x01Account"', 1)
    return raw[:-1] + b',"padding":"' + b"x" * (MAX_BODY + draw(st.integers(0, 4096))) + b'"}'


bodies = st.one_of(
    json_bodies(),
    json_bodies(),
    json_bodies(),
    huge_portrait_sets().map(
        lambda body: json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    ),
    deep_bodies,
    damaged_bodies(),
    st.binary(max_size=300),
)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    """Tencent's query string, or a mangled one: SdkAppid varied, extra and repeated parameters."""
    pairs = list(portrait_query().items())
    mode = draw(st.integers(0, 9))
    if mode < 7:  # mostly right, so that most examples reach the body
        sdkappid: str | None = draw(st.sampled_from([str(SDKAPPID), str(OTHER_SDKAPPID)]))
    elif mode == 7:
        sdkappid = draw(
            st.sampled_from(["", "0", "1400000099", "１４０００００００００", "1400000000.0", "-1", "9" * 30])
        )
    elif mode == 8:
        sdkappid = draw(any_text)
    else:
        sdkappid = None  # missing
    pairs = [(k, v) for k, v in pairs if k != "SdkAppid"]
    if sdkappid is not None:
        pairs.insert(draw(st.integers(0, len(pairs))), ("SdkAppid", sdkappid))
    command = draw(st.one_of(st.none(), st.just(PORTRAIT), any_text, st.just("__drop__")))
    if command == "__drop__":
        pairs = [(k, v) for k, v in pairs if k != "CallbackCommand"]
    elif command is not None:
        pairs = [(k, command if k == "CallbackCommand" else v) for k, v in pairs]
    pairs.extend(draw(st.lists(st.tuples(any_text, any_text), max_size=4)))
    if draw(st.integers(0, 4)) == 0:  # a repeated parameter: the last one counts
        pairs.append(("SdkAppid", draw(st.sampled_from([str(SDKAPPID), str(OTHER_SDKAPPID), "1400000099"]))))
    draw(st.randoms()).shuffle(pairs)
    query = urlencode(
        [(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in pairs]
    )
    junk = draw(st.sampled_from(["", "&", "&&=", "&%zz=%", "&a=%ff%fe", "&;=;", "&+=+"]))
    return query + junk


# --- the oracle -------------------------------------------------------------------------------


class Invalid(Exception):
    """The contract says: not a valid callback (400, kept)."""


class Undecided(Exception):
    """The contract leaves it open (e.g. nesting deeper than any parser must follow)."""


def parse_query(raw: bytes) -> dict[str, str]:
    """The query as the service reads it: percent-decoded UTF-8 (bad bytes replaced), last wins."""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def authenticated_app(query: dict[str, str], *, token: str | None) -> int | None:
    """The SDKAppID when the delivery is authenticated (contract: SdkAppid, then Sign), else None."""
    raw = query.get("SdkAppid", "")
    if not (raw.isascii() and raw.isdigit()) or int(raw) not in CONFIGURED:
        return None
    if token is not None:
        request_time = query.get("RequestTime", "")
        if not (request_time.isascii() and request_time.isdigit()):
            return None
        if abs(time.time() - int(request_time)) > 60:
            return None
        if query.get("Sign", "").lower() != expected_sign(token, request_time):
            return None
    return int(raw)


def _reject_constant(name: str) -> Any:
    raise Invalid(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise Invalid("number out of range")
    return value


def _walk(value: Any, depth: int = 0) -> None:
    """Invalid for NUL or lone surrogates anywhere; Undecided past a depth no parser must follow."""
    if depth > 400:
        raise Undecided("deeply nested")
    if isinstance(value, str):
        if "\x00" in value:
            raise Invalid("NUL")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("lone surrogate") from None
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, depth + 1)
            _walk(item, depth + 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value.encode()) <= MAX_KEY_BYTES


def expected_document(query: dict[str, str], raw: bytes) -> Any:
    """The decoded document of a valid delivery; Invalid or Undecided otherwise."""
    try:
        text = raw.decode("utf-8")
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise Undecided("nesting deeper than Python's parser follows") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"not JSON: {exc}") from None
    _walk(document)
    for key, value in query.items():
        if key != "Sign" and ("\x00" in key or "\x00" in value):
            raise Invalid("NUL in the query")
    if not isinstance(document, dict):
        raise Invalid("not an object")
    command = document.get("CallbackCommand")
    if command is not None and not isinstance(command, str):
        raise Invalid("CallbackCommand is not a string")
    command = command or query.get("CallbackCommand")
    if not command:
        raise Invalid("no CallbackCommand")
    if command == PORTRAIT:
        items = document.get("ProfileItem")
        if not (
            isinstance(document.get("CallbackCommand"), str)  # the body names it, not only the query
            and isinstance(document.get("Operator_Account"), str)
            and _key(document.get("From_Account"))
            and _is_int(document.get("EventTime"))
            and 0 <= document["EventTime"] <= INT64_MAX
            and isinstance(items, list)
            and all(
                isinstance(item, dict)
                and _key(item.get("Tag"))
                and (isinstance(item.get("Value"), str) or _is_int(item.get("Value")))
                for item in items
            )
        ):
            raise Invalid("not a valid Profile.CallbackPortraitSet")
    return document


# --- the check --------------------------------------------------------------------------------


async def snapshot(db: asyncpg.Connection[Any]) -> tuple[int, int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM events) AS events, (SELECT position FROM log_head) AS head,"
        " (SELECT count(*) FROM rejected_deliveries) AS rejected,"
        " (SELECT coalesce(max(id), 0) FROM rejected_deliveries) AS last_rejected"
    )
    assert row is not None
    return int(row["events"]), int(row["head"]), int(row["rejected"]), int(row["last_rejected"])


async def deliver_and_check(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    query_string: str,
    raw: bytes,
    *,
    token: str | None = None,
    redeliver: bool = False,
) -> int:
    events_before, head_before, rejected_before, last_rejected = await snapshot(db)
    reply = await client.post(f"/callback?{query_string}", content=raw)
    status = reply.status_code
    assert status == 200 or 400 <= status < 500, f"{status}: {reply.text}"
    assert reply.json() == OK_REPLY if status == 200 else is_fail_reply(reply.json()), reply.text

    query = parse_query(reply.request.url.query)  # what was sent, after the client's own escaping
    sdkappid = authenticated_app(query, token=token)
    event(f"{status} {'authenticated' if sdkappid else 'unauthenticated'}")
    events_after, head_after, rejected_after, _ = await snapshot(db)
    assert events_after == head_after, "the log head must count the events"

    if sdkappid is None:
        assert status in (400, 401, 403), f"an unauthenticated delivery got {status}"
        assert (events_after, rejected_after) == (events_before, rejected_before), "unauthenticated: no trace"
        return status
    if len(raw) > MAX_BODY:
        assert status == 413, f"a body of {len(raw)} bytes got {status}"
        assert (events_after, rejected_after) == (events_before, rejected_before)
        return status

    try:
        document: Any = expected_document(query, raw)
        expected: int | None = 200
    except Invalid:
        expected = 400
    except Undecided:
        expected = None
    assert status in (200, 400), f"an authenticated delivery within the limit got {status}: {reply.text}"
    if expected is not None:
        assert status == expected, f"expected {expected}, got {status}: {reply.text}"

    if status == 400:
        assert events_after == events_before, "a refused delivery changed the log"
        assert rejected_after == rejected_before + 1, "an authenticated invalid delivery must be kept"
        kept = await db.fetchrow(
            "SELECT sdkappid, body, reason FROM rejected_deliveries WHERE id > $1", last_rejected
        )
        assert kept is not None
        assert (kept["sdkappid"], bytes(kept["body"])) == (sdkappid, raw)
        assert kept["reason"]
        return status

    # 200: exactly one event holds this delivery's content.
    assert rejected_after == rejected_before, "an accepted delivery was also kept as rejected"
    # In a thread: a fresh stack, so that nesting the service decoded is decoded here too.
    canonical = await asyncio.to_thread(lambda: canonical_json(msgspec.json.decode(raw)))
    rows = await db.fetch(
        "SELECT position, body FROM events WHERE sdkappid = $1 AND body_digest = $2",
        sdkappid,
        hashlib.sha256(canonical).digest(),
    )
    assert len(rows) == 1, f"{len(rows)} events hold the accepted delivery"
    position, stored = int(rows[0]["position"]), rows[0]["body"]
    assert stored.encode() == canonical
    if events_after == events_before:  # a redelivery of something stored before
        assert position <= head_before
    else:
        assert events_after == events_before + 1, "one delivery, one event"
        assert position == head_after
    if expected is None:  # nested deeper than Python's json (and the checks below) follow
        assert await asyncio.to_thread(lambda: msgspec.json.decode(stored) == msgspec.json.decode(raw))
        return status
    assert json.loads(stored) == document, "the stored payload is not the delivered JSON content"
    page = await client.get("/events", params={"after": position - 1, "limit": 1}, headers=AUTH)
    assert page.status_code == 200, page.text
    assert page.json()["events"][0]["payload"] == document

    if redeliver:  # the same content, keys in reverse order, other spacing: OK, nothing new
        content = reordered(document)
        again = await client.post(
            f"/callback?{query_string}", content=content if len(content) <= MAX_BODY else raw
        )
        assert again.status_code == 200 and again.json() == OK_REPLY, again.text
        assert await snapshot(db) == (events_after, head_after, rejected_after, _)
    return status


def reordered(document: Any) -> bytes:
    """The same JSON content with every object's keys in reverse order, compact, not escaped."""

    def flip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: flip(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [flip(v) for v in value]
        return value

    return json.dumps(flip(document), separators=(",", ":"), ensure_ascii=False).encode()


async def assert_chain_intact(db: asyncpg.Connection[Any]) -> None:
    result = await verify_log(db)
    assert result.intact, result


# --- the tests --------------------------------------------------------------------------------


@FUZZ
@given(query_string=query_strings(), raw=bodies, redeliver=st.booleans())
@example(query_string=urlencode(portrait_query()), raw=nested(10_000, "arrays"), redeliver=False)
@example(query_string=urlencode(portrait_query()), raw=nested(10_000, "bare"), redeliver=False)
@example(query_string=urlencode(portrait_query()), raw=b"[" * 10_000, redeliver=False)
@example(
    query_string=urlencode(portrait_query()),
    raw=json.dumps(
        {
            "CallbackCommand": PORTRAIT,
            "Operator_Account": "a",
            "From_Account": "😀" * 256,  # exactly the key limit, 4-byte characters
            "EventTime": 1,
            "ProfileItem": [{"Tag": "😀" * 256, "Value": "x"}],
        },
        ensure_ascii=False,
    ).encode(),
    redeliver=True,
)
async def test_any_delivery_is_stored_once_or_refused_cleanly(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], query_string: str, raw: bytes, redeliver: bool
) -> None:
    status = await deliver_and_check(client, db, query_string, raw, redeliver=redeliver)
    if status == 200:
        await assert_chain_intact(db)


@pytest.fixture
async def signed_client(database_url: str) -> Any:
    """The app with a callback token: authentication also needs Sign and RequestTime."""
    async with AsyncTestClient(app=create_app(make_settings(database_url, callback_token=TOKEN))) as client:
        yield client


@st.composite
def signed_query_strings(draw: st.DrawFn) -> str:
    """A query string signed right, wrongly, too early or too late, or not at all."""
    query = parse_query(draw(query_strings()).encode("latin-1", "replace"))
    offset = draw(st.sampled_from([0, -30, 45, -3600, 600, None]))
    if offset is not None:
        request_time = str(int(time.time()) + offset)
        sign = draw(
            st.sampled_from(
                [expected_sign(TOKEN, request_time), expected_sign(TOKEN, request_time).upper(), "0" * 64, ""]
            )
        )
        query.update(RequestTime=request_time, Sign=sign)
    return urlencode(query)


@settings(FUZZ, max_examples=150)
@given(query_string=signed_query_strings(), raw=bodies)
async def test_any_signed_delivery_is_stored_once_or_refused_cleanly(
    signed_client: AsyncTestClient[Any], db: asyncpg.Connection[Any], query_string: str, raw: bytes
) -> None:
    status = await deliver_and_check(signed_client, db, query_string, raw, token=TOKEN)
    if status == 200:
        await assert_chain_intact(db)


async def test_thousands_of_distinct_tags_just_under_the_limit_are_accepted_at_once(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    """The worst case of the huge arrays above, every tag distinct. It used to take ~2 s to project
    (the body was re-parsed for each item, since fixed in project_events), past the reply deadline: its
    first delivery was a 503, and the append lock was held all that time."""
    body: dict[str, Any] = {
        "CallbackCommand": PORTRAIT,
        "Operator_Account": "admin",
        "From_Account": "many-tags",
        "EventTime": 1,
        "ProfileItem": [{"Tag": f"{i:x}", "Value": i} for i in range(2400)],
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) <= MAX_BODY
    reply = await client.post(f"/callback?{urlencode(portrait_query())}", content=raw)
    assert reply.status_code == 200, reply.text
    assert await db.fetchval("SELECT count(*) FROM profiles WHERE user_id = 'many-tags'") == 2400
