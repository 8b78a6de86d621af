"""Property: whatever arrives, decode_callback returns a NewEvent or raises CallbackError(400).

No other exception may escape: anything else would be an HTTP 500 and a delivery neither recorded
nor kept as rejected.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.ingest import CallbackError, NewEvent, canonical_json, decode_callback
from tests.conftest import SDKAPPID, portrait_body, portrait_query

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Query values come from Litestar's parse_qsl(errors="replace"): any text except lone surrogates.
query_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
queries = st.one_of(
    st.just(portrait_query()),
    st.builds(
        lambda extra: {**portrait_query(), **extra}, st.dictionaries(query_text, query_text, max_size=4)
    ),
    st.dictionaries(query_text, query_text, max_size=5),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["Profile.CallbackPortraitSet", "State.StateChange", "", "\x00", "\\u0000"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=5),
    ),
    max_leaves=25,
)
portrait_fields = st.sampled_from(
    ["CallbackCommand", "Operator_Account", "From_Account", "EventTime", "ProfileItem"]
)


@st.composite
def mutated_portrait_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A portrait-set body with some fields replaced, dropped or added."""
    body: dict[str, Any] = portrait_body(
        user=draw(st.text(max_size=8)), event_time=draw(st.integers(min_value=-5, max_value=2**64))
    )
    for _ in range(draw(st.integers(0, 3))):
        field = draw(portrait_fields)
        action = draw(st.sampled_from(["replace", "drop", "item"]))
        if action == "replace":
            body[field] = draw(json_values)
        elif action == "drop":
            body.pop(field, None)
        else:
            body["ProfileItem"] = draw(
                st.lists(
                    st.dictionaries(st.sampled_from(["Tag", "Value", "X"]), json_values, max_size=3),
                    max_size=3,
                )
            )
    return body


def check(query: dict[str, str], raw: bytes) -> None:
    try:
        event = decode_callback(query, raw, sdkappid=SDKAPPID, received_at=RECEIVED, peer="127.0.0.1")
    except CallbackError as exc:
        assert exc.status == 400
        assert exc.keep is True
        assert exc.reason
        return
    assert isinstance(event, NewEvent)
    # What is accepted can be stored: canonical UTF-8 JSON text without NUL, same content.
    assert "\x00" not in event.body
    assert event.body.encode() == canonical_json(msgspec.json.decode(event.body))
    assert msgspec.json.decode(event.body) == msgspec.json.decode(raw)
    assert event.command
    assert len(event.digest) == 32 and len(event.body_digest) == 32


@PROPERTY
@given(queries, st.binary(max_size=200))
@example(portrait_query(), b'"\xff"')
@example(portrait_query(), b'{"a":"\xed\xa0\x80"}')
@example(portrait_query(), b"[" * 5000)
@example({}, b"{}")
def test_arbitrary_bytes(query: dict[str, str], raw: bytes) -> None:
    check(query, raw)


@PROPERTY
@given(queries, json_values)
def test_arbitrary_json(query: dict[str, str], document: Any) -> None:
    check(query, json.dumps(document).encode())


@PROPERTY
@given(queries, mutated_portrait_sets(), st.booleans())
def test_mutated_portrait_sets(query: dict[str, str], body: dict[str, Any], ascii_only: bool) -> None:
    check(query, json.dumps(body, ensure_ascii=ascii_only).encode())


@PROPERTY
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0))
def test_json_with_garbage_spliced_in(garbage: bytes, at: int) -> None:
    raw = json.dumps(portrait_body()).encode()
    at %= len(raw)
    check(portrait_query(), raw[:at] + garbage + raw[at:])
