"""EventTimes as ISO 8601: the datetime path and the expanded-year path agree, any int64 renders."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from app.api.users import expanded_iso_ms, iso_ms

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
YEAR_1 = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
YEAR_10000 = 253_402_300_800_000


@given(st.integers(min_value=YEAR_1, max_value=YEAR_10000 - 1))
def test_the_expanded_form_counts_days_like_datetime(epoch_ms: int) -> None:
    ordinary = iso_ms(epoch_ms)
    assert expanded_iso_ms(epoch_ms) == "+00" + ordinary


def epoch_ms_of(text: str) -> int:
    """Back from ISO 8601 (possibly expanded) to epoch milliseconds, by counting days per year."""
    match = re.fullmatch(r"([+-]?\d+)-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z", text)
    assert match, text
    year, month, day, hours, minutes, seconds, ms = map(int, match.groups())
    shifted = year - (month <= 2)  # count years from March, so the leap day ends a year
    days_before_year = 365 * shifted + shifted // 4 - shifted // 100 + shifted // 400
    days_before_month = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    days = days_before_year + days_before_month + day - 1 - 719_468
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + ms


@given(INT64)
def test_every_int64_renders_and_reads_back_to_itself(epoch_ms: int) -> None:
    text = iso_ms(epoch_ms)
    assert epoch_ms_of(text) == epoch_ms
    four_digit_year = YEAR_1 <= epoch_ms < YEAR_10000
    assert (text[0] in "+-") is not four_digit_year, text


def test_the_edges_of_int64_and_of_the_four_digit_years() -> None:
    assert iso_ms(2**63 - 1) == "+292278994-08-17T07:12:55.807Z"
    assert iso_ms(-(2**63)) == "-292275055-05-16T16:47:04.192Z"
    assert iso_ms(YEAR_10000) == "+010000-01-01T00:00:00.000Z"
    assert iso_ms(YEAR_10000 - 1) == "9999-12-31T23:59:59.999Z"
    assert iso_ms(YEAR_1) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(YEAR_1 - 1) == "+000000-12-31T23:59:59.999Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
