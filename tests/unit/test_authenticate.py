"""`app.ingest.authenticate` and `expected_sign`: SdkAppid and Sign/RequestTime checks, pure."""

from __future__ import annotations

import pytest

from app.ingest import CallbackError, authenticate, expected_sign

APPS = (1400000000, 1400000001)
TOKEN = "xxxxyyyy"
VECTOR_TIME = "1669872112"
VECTOR_SIGN = "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"


def test_sign_matches_the_documented_test_vector() -> None:
    assert expected_sign(TOKEN, VECTOR_TIME) == VECTOR_SIGN


def test_sign_is_plain_sha256_not_hmac() -> None:
    import hashlib
    import hmac

    assert expected_sign("t", "1") == hashlib.sha256(b"t1").hexdigest()
    assert expected_sign("t", "1") != hmac.new(b"t", b"1", "sha256").hexdigest()


def signed(
    request_time: str = VECTOR_TIME, sign: str = VECTOR_SIGN, app: str = "1400000000"
) -> dict[str, str]:
    return {"SdkAppid": app, "Sign": sign, "RequestTime": request_time}


def refused(
    query: dict[str, str], *, token: str | None = None, now: float = float(VECTOR_TIME)
) -> CallbackError:
    with pytest.raises(CallbackError) as caught:
        authenticate(query, sdkappids=APPS, token=token, now=now)
    error = caught.value
    assert error.reason, "a refusal always says why"
    assert error.keep is False, "an unauthenticated delivery is never recorded"
    return error


# --- SdkAppid -------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["1400000000", "1400000001"])
def test_configured_sdkappid_is_accepted_without_token(app: str) -> None:
    assert authenticate({"SdkAppid": app}, sdkappids=APPS, token=None, now=0.0) == int(app)


def test_without_token_sign_parameters_are_ignored() -> None:
    query = {"SdkAppid": "1400000000", "Sign": "garbage", "RequestTime": "1"}
    assert authenticate(query, sdkappids=APPS, token=None, now=1e9) == 1400000000


@pytest.mark.parametrize("query", [{}, {"SdkAppid": ""}, {"CallbackCommand": "Profile.CallbackPortraitSet"}])
def test_missing_sdkappid_is_400(query: dict[str, str]) -> None:
    assert refused(query).status == 400


@pytest.mark.parametrize(
    "app",
    [
        "abc",
        "-1400000000",
        "+1400000000",
        "1400000000.0",
        "1.4e9",
        " 1400000000",
        "1400000000 ",
        "0x5378_6d00",
        "１４０００００００００",  # fullwidth digits: str.isdigit() but not ASCII
        "1" * 19,
        "1400000000\x00",
    ],
)
def test_non_numeric_sdkappid_is_400(app: str) -> None:
    assert refused({"SdkAppid": app}).status == 400


@pytest.mark.parametrize("app", ["1400000002", "0", "1", "14000000009", "999999999999999999"])
def test_unconfigured_sdkappid_is_403(app: str) -> None:
    error = refused({"SdkAppid": app})
    assert error.status == 403


def test_unconfigured_sdkappid_with_a_valid_sign_is_still_403() -> None:
    error = refused(signed(app="1400000099"), token=TOKEN)
    assert error.status == 403


def test_leading_zero_sdkappid_means_the_same_number() -> None:
    assert authenticate({"SdkAppid": "01400000000"}, sdkappids=APPS, token=None, now=0.0) == 1400000000


# --- Sign and RequestTime -------------------------------------------------------------------


def test_valid_sign_is_accepted() -> None:
    assert authenticate(signed(), sdkappids=APPS, token=TOKEN, now=float(VECTOR_TIME)) == 1400000000


def test_sign_with_wrong_token_is_401() -> None:
    assert refused(signed(sign=expected_sign("other-token", VECTOR_TIME)), token=TOKEN).status == 401


@pytest.mark.parametrize(
    "sign",
    [
        VECTOR_SIGN[:-1] + "0",
        VECTOR_SIGN[:-1],
        VECTOR_SIGN + "0",
        "0" * 64,
        "not-hex",
        expected_sign(TOKEN, str(int(VECTOR_TIME) + 1)),  # the sign of another second
    ],
)
def test_wrong_sign_is_401(sign: str) -> None:
    assert refused(signed(sign=sign), token=TOKEN).status == 401


@pytest.mark.parametrize(
    "query",
    [
        {"SdkAppid": "1400000000"},
        {"SdkAppid": "1400000000", "RequestTime": VECTOR_TIME},
        {"SdkAppid": "1400000000", "Sign": VECTOR_SIGN},
        {"SdkAppid": "1400000000", "Sign": "", "RequestTime": VECTOR_TIME},
        {"SdkAppid": "1400000000", "Sign": VECTOR_SIGN, "RequestTime": ""},
    ],
)
def test_missing_sign_or_request_time_is_401(query: dict[str, str]) -> None:
    assert refused(query, token=TOKEN).status == 401


@pytest.mark.parametrize(
    "request_time", ["abc", "1669872112.0", "-1669872112", "1e9", "１６６９８７２１１２", "9" * 40]
)
def test_non_numeric_request_time_is_401(request_time: str) -> None:
    query = signed(request_time=request_time, sign=expected_sign(TOKEN, request_time))
    assert refused(query, token=TOKEN, now=float(VECTOR_TIME)).status == 401


@pytest.mark.parametrize("age", [61, 61.000001, 3600, 10**9])
def test_request_time_more_than_60s_old_is_401(age: float) -> None:
    error = refused(signed(), token=TOKEN, now=float(VECTOR_TIME) + age)
    assert error.status == 401
    assert "60" in error.reason


@pytest.mark.parametrize("ahead", [61, 60.5, 3600])
def test_request_time_more_than_60s_in_the_future_is_401(ahead: float) -> None:
    assert refused(signed(), token=TOKEN, now=float(VECTOR_TIME) - ahead).status == 401


@pytest.mark.parametrize("offset", [-60, -59.999, -1, 0, 1, 59.5, 60])
def test_request_time_within_60s_either_way_is_accepted(offset: float) -> None:
    now = float(VECTOR_TIME) + offset
    assert authenticate(signed(), sdkappids=APPS, token=TOKEN, now=now) == 1400000000


def test_expired_request_is_refused_even_with_a_correct_sign() -> None:
    old = str(int(VECTOR_TIME) - 120)
    error = refused(signed(request_time=old, sign=expected_sign(TOKEN, old)), token=TOKEN)
    assert error.status == 401


def test_token_with_non_ascii_characters() -> None:
    token = "秘密-token"
    query = signed(sign=expected_sign(token, VECTOR_TIME))
    assert authenticate(query, sdkappids=APPS, token=token, now=float(VECTOR_TIME)) == 1400000000
    assert refused(query, token="秘密-tokem").status == 401
