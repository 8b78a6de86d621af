"""The ingest path's pure part: authenticate a delivery and translate it into an event to append."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

PORTRAIT_SET = "Profile.CallbackPortraitSet"
SIGN_WINDOW_SECONDS = 60
INT64_MAX = 2**63 - 1
DIGEST_VERSION = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# From_Account and every Tag are index keys of the log and the projections; PostgreSQL refuses an
# index entry over ~2.7 kB (a program-limit error, not a data error), so a longer one would be
# refused on every redelivery. Tencent's UserIDs are at most 32 bytes and tags a few dozen: this
# bound leaves a wide margin for the permissive reading while keeping (user, tag) keys indexable.
MAX_KEY_BYTES = 1024

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class CallbackError(Exception):
    """A delivery that is refused, with the HTTP status and whether it is kept as rejected."""

    def __init__(self, status: int, reason: str, *, keep: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.keep = keep


class ProfileItem(msgspec.Struct, frozen=True):
    """One changed profile field."""

    Tag: NonEmpty
    Value: str | int


class PortraitSet(msgspec.Struct, frozen=True):
    """The body of `Profile.CallbackPortraitSet`."""

    CallbackCommand: str
    Operator_Account: str
    From_Account: NonEmpty
    EventTime: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    ProfileItem: list[ProfileItem]


class NewEvent(msgspec.Struct, frozen=True):
    """An accepted delivery, ready to append."""

    sdkappid: int
    command: str
    user_id: str | None
    event_time: int | None
    received_at: datetime
    metadata: dict[str, str]
    body: str
    body_digest: bytes
    digest: bytes


def expected_sign(token: str, request_time: str) -> str:
    """Tencent's callback signature: lowercase hex SHA-256 of token + RequestTime."""
    return hashlib.sha256((token + request_time).encode()).hexdigest()


def authenticate(
    query: Mapping[str, str],
    *,
    sdkappids: tuple[int, ...],
    token: str | None,
    now: float,
) -> int:
    """Return the delivery's SDKAppID, or raise CallbackError when it must not be recorded."""
    raw_app = query.get("SdkAppid")
    if raw_app is None or raw_app == "":
        raise CallbackError(400, "SdkAppid is missing")
    if not (raw_app.isascii() and raw_app.isdigit()) or len(raw_app) > 18:
        raise CallbackError(400, "SdkAppid is not a number")
    sdkappid = int(raw_app)
    if sdkappid not in sdkappids:
        raise CallbackError(403, f"SdkAppid {sdkappid} is not configured here")
    if token is None:
        return sdkappid
    sign = query.get("Sign")
    request_time = query.get("RequestTime")
    if not sign or not request_time:
        raise CallbackError(401, "Sign and RequestTime are required")
    if not (request_time.isascii() and request_time.isdigit()) or len(request_time) > 12:
        raise CallbackError(401, "RequestTime is not a Unix time in seconds")
    if abs(now - int(request_time)) > SIGN_WINDOW_SECONDS:
        raise CallbackError(401, "RequestTime is more than 60 s from the receiver's clock")
    if not hmac.compare_digest(sign.lower().encode(), expected_sign(token, request_time).encode()):
        raise CallbackError(401, "Sign does not match")
    return sdkappid


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: equal content gives equal bytes."""
    return msgspec.json.encode(value, order="sorted")


def event_digest(
    *,
    sdkappid: int,
    command: str,
    user_id: str | None,
    event_time: int | None,
    received_at: datetime,
    metadata: Mapping[str, str],
    body_digest: bytes,
) -> bytes:
    """SHA-256 of an event's canonical bytes; covers the body through its own digest."""
    micros = (received_at - EPOCH) // timedelta(microseconds=1)
    record = [
        DIGEST_VERSION,
        sdkappid,
        command,
        user_id,
        event_time,
        micros,
        dict(metadata),
        body_digest.hex(),
    ]
    return hashlib.sha256(canonical_json(record)).digest()


_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _has_nul_escape(body: bytes) -> bool:
    return b"\\u0000" in body and _NUL_ESCAPE.search(body) is not None


def decode_callback(
    query: Mapping[str, str],
    raw: bytes,
    *,
    sdkappid: int,
    received_at: datetime,
    peer: str | None = None,
) -> NewEvent:
    """Validate an authenticated delivery's body and make the event; CallbackError(400) if bad."""
    try:
        document = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec reports invalid UTF-8 inside a JSON string as UnicodeDecodeError.
        raise CallbackError(400, f"body is not valid JSON: {exc}", keep=True) from exc
    if not isinstance(document, dict):
        raise CallbackError(400, "body is not a JSON object", keep=True)

    body_command = document.get("CallbackCommand")
    query_command = query.get("CallbackCommand")
    if body_command is not None and not isinstance(body_command, str):
        raise CallbackError(400, "CallbackCommand is not a string", keep=True)
    command = body_command or query_command
    if not command:
        raise CallbackError(400, "CallbackCommand is missing", keep=True)

    user_id: str | None = None
    event_time: int | None = None
    if command == PORTRAIT_SET:
        try:
            portrait = msgspec.convert(document, PortraitSet)
        except msgspec.ValidationError as exc:
            raise CallbackError(400, f"invalid {PORTRAIT_SET}: {exc}", keep=True) from exc
        for name, key in (
            ("From_Account", portrait.From_Account),
            *(("ProfileItem Tag", item.Tag) for item in portrait.ProfileItem),
        ):
            if len(key) > MAX_KEY_BYTES // 4 and len(key.encode()) > MAX_KEY_BYTES:
                raise CallbackError(400, f"{name} is longer than {MAX_KEY_BYTES} bytes", keep=True)
        user_id = portrait.From_Account
        event_time = portrait.EventTime
    else:
        candidate = document.get("EventTime")
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            event_time = candidate if 0 <= candidate <= INT64_MAX else None

    metadata = {k: v for k, v in query.items() if k != "Sign"}
    if peer:
        metadata["peer"] = peer
    try:
        body = canonical_json(document)
    except (RecursionError, msgspec.EncodeError) as exc:  # pragma: no cover - decode guards it
        raise CallbackError(400, f"body cannot be stored: {exc}", keep=True) from exc
    if _has_nul_escape(body) or any("\x00" in k or "\x00" in v for k, v in metadata.items()):
        raise CallbackError(400, "U+0000 (NUL) cannot be stored as JSON text", keep=True)
    body_digest = hashlib.sha256(body).digest()
    return NewEvent(
        sdkappid=sdkappid,
        command=command,
        user_id=user_id,
        event_time=event_time,
        received_at=received_at,
        metadata=metadata,
        body=body.decode(),
        body_digest=body_digest,
        digest=event_digest(
            sdkappid=sdkappid,
            command=command,
            user_id=user_id,
            event_time=event_time,
            received_at=received_at,
            metadata=metadata,
            body_digest=body_digest,
        ),
    )
