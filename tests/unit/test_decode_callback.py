"""`app.ingest.decode_callback`: body validation, canonical JSON, digests and metadata, pure."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app.ingest import CallbackError, NewEvent, canonical_json, decode_callback, event_digest
from tests.conftest import NICKNAME_500_BYTES, SDKAPPID, fixture_deliveries, portrait_body, portrait_query

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def decode(body: Any, query: dict[str, str] | None = None, *, peer: str | None = None) -> NewEvent:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_callback(
        query if query is not None else portrait_query(),
        raw,
        sdkappid=SDKAPPID,
        received_at=RECEIVED,
        peer=peer,
    )


def rejected(body: Any, query: dict[str, str] | None = None) -> CallbackError:
    with pytest.raises(CallbackError) as caught:
        decode(body, query)
    error = caught.value
    assert error.status == 400
    assert error.keep is True, "an authenticated but invalid delivery is kept for inspection"
    assert error.reason
    return error


def with_field(**changes: Any) -> dict[str, Any]:
    body = portrait_body()
    body.update(changes)
    return body


def with_item(**item: Any) -> dict[str, Any]:
    body = portrait_body()
    body["ProfileItem"] = [item]
    return body


def without(field: str) -> dict[str, Any]:
    body = portrait_body()
    del body[field]
    return body


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", fixture_deliveries(), ids=lambda d: d["name"])
def test_every_fixture_is_accepted(delivery: dict[str, Any]) -> None:
    event = decode(delivery["body"], delivery["query"])
    assert event.sdkappid == SDKAPPID
    assert event.command == delivery["body"]["CallbackCommand"]
    assert json.loads(event.body) == delivery["body"]
    assert event.event_time == delivery["body"]["EventTime"]
    assert event.received_at == RECEIVED
    assert event.metadata == delivery["query"]
    if event.command == "Profile.CallbackPortraitSet":
        assert event.user_id == delivery["body"]["From_Account"]
    else:
        assert event.user_id is None


def test_digests_cover_the_canonical_body_and_the_record() -> None:
    event = decode(portrait_body(), peer="10.1.2.3")
    assert event.body_digest == hashlib.sha256(event.body.encode()).digest()
    assert event.digest == event_digest(
        sdkappid=event.sdkappid,
        command=event.command,
        user_id=event.user_id,
        event_time=event.event_time,
        received_at=event.received_at,
        metadata=event.metadata,
        body_digest=event.body_digest,
    )
    assert len(event.digest) == 32


def test_empty_profile_item_list_is_a_well_typed_delivery() -> None:
    event = decode(with_field(ProfileItem=[]))
    assert event.user_id == "u1"
    assert json.loads(event.body)["ProfileItem"] == []


def test_uint32_value_as_number_and_as_numeric_string_keeps_its_json_type() -> None:
    body = portrait_body()
    body["ProfileItem"] = [
        {"Tag": "Tag_Profile_IM_BirthDay", "Value": 19900131},
        {"Tag": "Tag_Profile_IM_Level", "Value": "7"},
    ]
    items = json.loads(decode(body).body)["ProfileItem"]
    assert items == [
        {"Tag": "Tag_Profile_IM_BirthDay", "Value": 19900131},
        {"Tag": "Tag_Profile_IM_Level", "Value": "7"},
    ]


def test_admin_change_keeps_operator_and_user_apart() -> None:
    body = portrait_body(user="alice")
    body["Operator_Account"] = "administrator"
    event = decode(body)
    assert event.user_id == "alice"
    assert json.loads(event.body)["Operator_Account"] == "administrator"


@pytest.mark.parametrize(
    "body",
    [
        {"CallbackCommand": "State.StateChange", "EventTime": 1700000400000, "Info": {"Action": "Login"}},
        {
            "CallbackCommand": "C2C.CallbackBeforeSendMsg",
            "From_Account": "a",
            "To_Account": "b",
            "MsgBody": [],
        },
        {"CallbackCommand": "Group.CallbackAfterNewMemberJoin", "EventTime": "not a number"},
        {"CallbackCommand": "Some.FutureCommand", "EventTime": -5},
        {"CallbackCommand": "Some.FutureCommand", "EventTime": True},
    ],
)
def test_other_commands_are_accepted_with_no_user(body: dict[str, Any]) -> None:
    query = portrait_query(CallbackCommand=body["CallbackCommand"])
    event = decode(body, query)
    assert event.command == body["CallbackCommand"]
    assert event.user_id is None
    expected_time = body.get("EventTime")
    if not (isinstance(expected_time, int) and not isinstance(expected_time, bool) and expected_time >= 0):
        expected_time = None
    assert event.event_time == expected_time


def test_command_taken_from_the_query_when_the_body_has_none() -> None:
    event = decode({"Info": 1}, portrait_query(CallbackCommand="State.StateChange"))
    assert event.command == "State.StateChange"


def test_command_missing_everywhere_is_rejected() -> None:
    query = portrait_query()
    del query["CallbackCommand"]
    rejected({"EventTime": 1}, query)


def test_reordered_keys_and_whitespace_give_the_same_body_and_digest() -> None:
    compact = json.dumps(portrait_body(), separators=(",", ":")).encode()
    spaced = (
        b'\n {  "ProfileItem" : [ { "Value" : "nick of u1",\t"Tag" : "Tag_Profile_IM_Nick" } ] ,\r\n'
        b'  "EventTime" : 1700000000000 , "From_Account" : "u1" , "Operator_Account" : "u1" ,'
        b' "CallbackCommand" : "Profile.CallbackPortraitSet" }  \n'
    )
    escaped = compact.replace(b'"u1"', b'"\\u0075\\u0031"')
    first, second, third = decode(compact), decode(spaced), decode(escaped)
    assert first.body == second.body == third.body
    assert first.body_digest == second.body_digest == third.body_digest
    assert first.body.encode() == canonical_json(portrait_body())
    assert first.body.startswith('{"CallbackCommand":')


def test_canonical_json_sorts_keys_at_every_level_and_is_compact() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": None}}) == (
        b'{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}'
    )


def test_array_order_matters() -> None:
    body = portrait_body(**{"Tag_Profile_IM_Nick": "n", "Tag_Profile_IM_Level": 1})
    reversed_body = portrait_body(**{"Tag_Profile_IM_Level": 1, "Tag_Profile_IM_Nick": "n"})
    assert decode(body).body_digest != decode(reversed_body).body_digest


def test_metadata_keeps_unknown_platform_and_ipv6_and_drops_sign() -> None:
    query = portrait_query(
        ClientIP="2001:db8::ff00:42:8329",
        OptPlatform="HarmonyOS",
        Sign="17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061",
        RequestTime="1669872112",
        Extra="kept too",
    )
    event = decode(portrait_body(), query, peer="::1")
    assert event.metadata["ClientIP"] == "2001:db8::ff00:42:8329"
    assert event.metadata["OptPlatform"] == "HarmonyOS"
    assert event.metadata["RequestTime"] == "1669872112"
    assert event.metadata["Extra"] == "kept too"
    assert event.metadata["peer"] == "::1"
    assert "Sign" not in event.metadata
    assert event.metadata["SdkAppid"] == str(SDKAPPID)


@pytest.mark.parametrize("platform", ["IOS", "macOS", "Mac", "iPad", "Unknown", "", "Weird Platform/1.0"])
def test_any_opt_platform_is_data(platform: str) -> None:
    assert decode(portrait_body(), portrait_query(OptPlatform=platform)).metadata["OptPlatform"] == platform


def test_500_byte_multibyte_nickname_is_kept_byte_for_byte() -> None:
    nickname = NICKNAME_500_BYTES
    assert len(nickname.encode()) == 500
    event = decode(portrait_body(Tag_Profile_IM_Nick=nickname))
    assert nickname.encode() in event.body.encode(), "stored as raw UTF-8, not escaped or altered"
    assert json.loads(event.body)["ProfileItem"][0]["Value"] == nickname


def test_escaped_backslash_u0000_text_is_fine_but_a_real_nul_is_rejected() -> None:
    literal = decode(portrait_body(Tag_Profile_IM_Nick="\\u0000"))  # six characters, no NUL
    assert json.loads(literal.body)["ProfileItem"][0]["Value"] == "\\u0000"
    rejected(portrait_body(Tag_Profile_IM_Nick="a\x00b"))
    rejected(portrait_body(Tag_Profile_IM_Nick="\\\x00"))
    rejected({"CallbackCommand": "State.StateChange", "Info": {"\x00": 1}})


def test_nul_in_the_query_is_rejected() -> None:
    rejected(portrait_body(), portrait_query(ClientIP="1.2.3.4\x00"))


# --- rejected -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b'{"a":1',
        b"{'a': 1}",
        b'{"a":NaN}',
        b'{"a":1e999}',
        b"\xef\xbb\xbf{}",
        b"{} {}",
    ],
)
def test_non_json_body_is_rejected(raw: bytes) -> None:
    assert "JSON" in rejected(raw).reason


@pytest.mark.parametrize(
    "raw",
    [b'{"From_Account":"\xff"}', b'{"\xc3":1}', b'"\xed\xa0\x80"', b'{"a":"\\ud800"}', b'{"a":"\\udc00"}'],
)
def test_invalid_utf8_or_lone_surrogate_is_rejected(raw: bytes) -> None:
    rejected(raw)


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"1", b'"text"', b"null", b"true"])
def test_non_object_json_is_rejected(raw: bytes) -> None:
    rejected(raw)


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    rejected(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(with_field(EventTime="1656921052497"), id="EventTime-string"),
        pytest.param(with_field(EventTime=1656921052497.0), id="EventTime-float"),
        pytest.param(with_field(EventTime=1.5), id="EventTime-fraction"),
        pytest.param(with_field(EventTime=True), id="EventTime-bool"),
        pytest.param(with_field(EventTime=-1), id="EventTime-negative"),
        pytest.param(with_field(EventTime=2**63), id="EventTime-over-int64"),
        pytest.param(with_field(EventTime=None), id="EventTime-null"),
        pytest.param(without("EventTime"), id="EventTime-missing"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Level", Value=1.5), id="Value-float"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Level", Value=1.0), id="Value-float-integral"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Nick", Value=None), id="Value-null"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Nick", Value={"a": 1}), id="Value-object"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Nick", Value=["a"]), id="Value-array"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Nick", Value=True), id="Value-bool"),
        pytest.param(with_item(Tag="Tag_Profile_IM_Nick"), id="Value-missing"),
        pytest.param(with_item(Tag="", Value="x"), id="Tag-empty"),
        pytest.param(with_item(Tag=5, Value="x"), id="Tag-number"),
        pytest.param(with_item(Value="x"), id="Tag-missing"),
        pytest.param(without("From_Account"), id="From_Account-missing"),
        pytest.param(with_field(From_Account=""), id="From_Account-empty"),
        pytest.param(with_field(From_Account=12), id="From_Account-number"),
        pytest.param(with_field(Operator_Account=None), id="Operator_Account-null"),
        pytest.param(
            with_field(ProfileItem={"Tag": "Tag_Profile_IM_Nick", "Value": "x"}), id="ProfileItem-object"
        ),
        pytest.param(with_field(ProfileItem="Tag_Profile_IM_Nick"), id="ProfileItem-string"),
        pytest.param(with_field(ProfileItem=None), id="ProfileItem-null"),
        pytest.param(with_field(ProfileItem=["x"]), id="ProfileItem-item-not-object"),
        pytest.param(without("ProfileItem"), id="ProfileItem-missing"),
        pytest.param(with_field(CallbackCommand=5), id="CallbackCommand-number"),
    ],
)
def test_badly_typed_portrait_set_is_rejected(body: dict[str, Any]) -> None:
    rejected(body)


def test_rejection_reason_names_the_bad_field() -> None:
    assert "EventTime" in rejected(with_field(EventTime="1")).reason
    assert "Value" in rejected(with_item(Tag="t", Value=None)).reason
