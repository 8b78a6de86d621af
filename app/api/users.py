"""The read API over profiles: `GET /users/{user_id}/profile` and `/profile-history`."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, unquote

import msgspec
from litestar import Controller, Request, get
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.params import Parameter
from litestar.types import Scope

from app.api.auth import REQUIRE_TOKEN, SECURITY
from app.api.services import Services, services
from app.database import pooled_connection
from app.queries import INT64_MAX, Change, read_history, read_profile

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAIVE_EPOCH = datetime(1970, 1, 1)


class TagChange(msgspec.Struct):
    """A tag's value before and after one change (`old` is null for the first value)."""

    tag: str
    old: Any
    new: Any


class HistoryEntry(msgspec.Struct):
    """One delivery that changed the user's profile."""

    position: int
    event_time: int
    event_time_iso: str
    received_at: datetime
    operator_account: str | None
    opt_platform: str | None
    client_ip: str | None
    changes: list[TagChange]


class History(msgspec.Struct):
    """A page of a user's history, newest first; pass `next_cursor` as `cursor` for more."""

    sdkappid: int
    user_id: str
    entries: list[HistoryEntry]
    next_cursor: str | None


class Profile(msgspec.Struct):
    """A user's profile now, or as of `at`: tag → value, values with their JSON type as received."""

    sdkappid: int
    user_id: str
    profile: dict[str, Any]
    version: int
    updated_at: str
    at: str | None = None


class ServiceUnavailable(HTTPException):
    """503: a projection this answer depends on is stale."""

    status_code = 503


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds (exact: no float seconds)."""
    try:
        return (NAIVE_EPOCH + timedelta(milliseconds=epoch_ms)).isoformat(timespec="milliseconds") + "Z"
    except OverflowError:
        return expanded_iso_ms(epoch_ms)


def expanded_iso_ms(epoch_ms: int) -> str:
    """Any int64 EventTime as ISO 8601, years outside 1 to 9999 in the expanded form (±YYYYYY)."""
    days, ms = divmod(epoch_ms, 86_400_000)
    # Proleptic Gregorian date from a day count (H. Hinnant's civil_from_days), exact for any int.
    era, day_of_era = divmod(days + 719_468, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (month <= 2)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    sign = "+" if year >= 0 else "-"
    return f"{sign}{abs(year):06d}-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}Z"


def parse_time(name: str, raw: str | None) -> int | None:
    """An ISO 8601 time or epoch milliseconds as epoch milliseconds; 400 when it is neither."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if re.fullmatch(r"-?[0-9]+", text):
        # More than 19 digits is out of range anyway (and int() refuses very long strings).
        epoch_ms = int(text) if len(text.lstrip("-")) <= 19 else INT64_MAX + 1
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationException(f"{name}: {raw!r} is neither ISO 8601 nor epoch milliseconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # Exact integer arithmetic: float timestamps land 1 ms early for some instants.
        epoch_ms = (moment - EPOCH) // timedelta(milliseconds=1)
    if not -INT64_MAX <= epoch_ms <= INT64_MAX:
        raise ValidationException(f"{name}: {raw!r} is out of range")
    return epoch_ms


def encode_cursor(event_time: int, position: int) -> str:
    """An opaque keyset cursor."""
    return base64.urlsafe_b64encode(f"{event_time}:{position}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[int, int]:
    """The (event_time, position) in a cursor; 400 when it was not made by us."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        event_time, position = (int(part) for part in text.split(":"))
        if not (0 <= event_time <= INT64_MAX and 0 <= position <= INT64_MAX):
            raise ValueError("out of range")
        return event_time, position
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationException("cursor: not a cursor returned by this API") from None


def resolve_sdkappid(svc: Services, raw: int | None) -> int:
    """The app a read is about: `?sdkappid=`, optional when exactly one is configured."""
    configured = svc.settings.sdkappids
    if raw is None:
        if len(configured) == 1:
            return configured[0]
        raise ValidationException(
            f"sdkappid: required, several apps are configured ({', '.join(map(str, configured))})"
        )
    if raw not in configured:
        raise ValidationException(f"sdkappid: {raw} is not configured here")
    return raw


def without_nul(name: str, value: str | None) -> str | None:
    """`value`; 400 if it holds U+0000, which PostgreSQL text cannot (nothing stored has one)."""
    if value is not None and "\x00" in value:
        raise ValidationException(f"{name}: U+0000 (NUL) is not allowed")
    return value


def read_target(
    request: Request[Any, Any, Any], sdkappid: int | None, user_id: str
) -> tuple[Services, int, str]:
    """The services, the app and the user (percent-decoded) a read is about; 400 for a bad app."""
    svc = services(request.app.state)
    app_id, user = resolve_sdkappid(svc, sdkappid), unquote(user_id)
    without_nul("user_id", user)
    return svc, app_id, user


def ensure_fresh(problems: list[str]) -> None:
    """503 while a projection awaits its rebuild."""
    if problems:
        raise ServiceUnavailable(detail="; ".join(problems))


class UsersController(Controller):
    """A user's profile, as of now or any time, and who changed what, when."""

    path = "/users/{user_id:str}"
    tags = ["profiles"]  # noqa: RUF012 - Litestar declares these as instance attributes
    middleware = [REQUIRE_TOKEN]  # noqa: RUF012
    security = SECURITY

    @get(
        "/profile",
        operation_id="getProfile",
        summary="A user's current profile, or as it was at a time",
        raises=[NotAuthorizedException, NotFoundException, ValidationException, ServiceUnavailable],
    )
    async def get_profile(
        self,
        request: Request,  # type: ignore[type-arg]
        user_id: Annotated[str, Parameter(description="The UserID (percent-encoded)")],
        at: Annotated[str | None, Parameter(description="ISO 8601 time or epoch milliseconds")] = None,
        sdkappid: Annotated[
            int | None, Parameter(description="Required when several apps are configured")
        ] = None,
    ) -> Profile:
        """Per tag, the value of the change with the latest EventTime (ties: later position)."""
        svc, app_id, user = read_target(request, sdkappid, user_id)
        at_ms = parse_time("at", at)
        async with pooled_connection(svc.pool) as connection:
            read = await read_profile(connection, app_id, user, at_ms)
        ensure_fresh(read.problems)
        if read.updated_at is None:
            when = f" at {at}" if at is not None else ""
            raise NotFoundException(f"no profile for user {user!r} in app {app_id}{when}")
        return Profile(
            sdkappid=app_id,
            user_id=user,
            profile=read.profile,
            version=read.version,
            updated_at=iso_ms(read.updated_at),
            at=iso_ms(at_ms) if at_ms is not None else None,
        )

    @get(
        "/profile-history",
        operation_id="getProfileHistory",
        summary="A user's profile changes, newest first",
        raises=[NotAuthorizedException, NotFoundException, ValidationException, ServiceUnavailable],
    )
    async def get_profile_history(
        self,
        request: Request,  # type: ignore[type-arg]
        user_id: Annotated[str, Parameter(description="The UserID (percent-encoded)")],
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Events per page")] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Parameter(description="`next_cursor` of the page before")] = None,
        tag: Annotated[str | None, Parameter(description="Only changes of this tag")] = None,
        since: Annotated[
            str | None, Parameter(description="EventTime at or after (ISO 8601 or epoch ms)")
        ] = None,
        until: Annotated[
            str | None, Parameter(description="EventTime at or before (ISO 8601 or epoch ms)")
        ] = None,
        operator: Annotated[
            str | None, Parameter(description="Only changes made by this Operator_Account")
        ] = None,
        sdkappid: Annotated[
            int | None, Parameter(description="Required when several apps are configured")
        ] = None,
    ) -> History:
        """Each change with who made it, from where, and every tag's old and new value."""
        svc, app_id, user = read_target(request, sdkappid, user_id)
        since_ms, until_ms = parse_time("since", since), parse_time("until", until)
        before = decode_cursor(cursor) if cursor else None
        async with pooled_connection(svc.pool) as connection:
            read = await read_history(
                connection,
                app_id,
                user,
                tag=without_nul("tag", tag),
                operator=without_nul("operator", operator),
                since=since_ms,
                until=until_ms,
                before=before,
                limit=limit + 1,
            )
        ensure_fresh(read.problems)
        if not read.changes and before is None and not read.user_exists:
            raise NotFoundException(f"no user {user!r} in app {app_id}")
        entries = group_entries(read.changes)
        next_cursor = None
        if len(entries) > limit:
            entries = entries[:limit]
            last = entries[-1]
            next_cursor = encode_cursor(last.event_time, last.position)
        return History(sdkappid=app_id, user_id=user, entries=entries, next_cursor=next_cursor)


def group_entries(changes: list[Change]) -> list[HistoryEntry]:
    """Rows of (event, tag) grouped into one entry per event, order kept."""
    entries: list[HistoryEntry] = []
    for change in changes:
        if not entries or entries[-1].position != change.position:
            entries.append(
                HistoryEntry(
                    position=change.position,
                    event_time=change.event_time,
                    event_time_iso=iso_ms(change.event_time),
                    received_at=change.received_at,
                    operator_account=change.operator_account,
                    opt_platform=change.opt_platform,
                    client_ip=change.client_ip,
                    changes=[],
                )
            )
        entries[-1].changes.append(TagChange(change.tag, change.old, change.new))
    return entries


def encode_user_segment(scope: Scope) -> None:
    """Keep a percent-encoded `/` in a user id inside its path segment (the router decodes)."""
    raw_path = scope.get("raw_path")
    if not raw_path:
        return
    parts = raw_path.decode("latin-1").partition("?")[0].split("/")
    if len(parts) >= 4 and parts[1] == "users":
        parts[2] = quote(unquote(parts[2]), safe="")
        scope["path"] = "/".join(parts)
