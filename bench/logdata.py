"""Synthetic event log rows: Profile.CallbackPortraitSet events as COPY text, digests made by app.ingest."""

from __future__ import annotations

import hashlib
import random
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.ingest import PORTRAIT_SET, canonical_json, event_digest
from bench.delivery import SDKAPPIDS

SDKAPPID = SDKAPPIDS[0]
GENESIS = bytes(32)
BASE_EVENT_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BASE_RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
STEP_MS = 50  # one event every 50 ms: 1M events span ~14 hours
LATE_FRACTION = 0.03
COLUMNS = (
    "position",
    "sdkappid",
    "command",
    "user_id",
    "user_version",
    "event_time",
    "received_at",
    "metadata",
    "body",
    "body_digest",
    "digest",
    "hash",
)
PLATFORMS = ("iOS", "Android", "Web", "RESTAPI", "Windows")
GENDERS = ("Gender_Type_Male", "Gender_Type_Female", "Gender_Type_Unknown")
ALLOW = ("AllowType_Type_NeedConfirm", "AllowType_Type_AllowAny", "AllowType_Type_DenyAny")
TAGS = (
    "Tag_Profile_IM_Nick",
    "Tag_Profile_IM_Gender",
    "Tag_Profile_IM_BirthDay",
    "Tag_Profile_IM_Location",
    "Tag_Profile_IM_SelfSignature",
    "Tag_Profile_IM_AllowType",
    "Tag_Profile_IM_Language",
    "Tag_Profile_IM_Image",
    "Tag_Profile_IM_Level",
    "Tag_Profile_IM_Role",
    "Tag_Profile_Custom_Hobby",
)
NICKS = ("nick ", "昵称 ", "Nick_")


def user_name(index: int) -> str:
    """The UserID of user `index` (reads.lua builds the same names)."""
    return f"user{index}"


@dataclass(frozen=True)
class Plan:
    """Per position (index 0 = position 1): the user, its per-user version and the EventTime."""

    users: array[int]
    versions: array[int]
    event_times: array[int]
    out_of_order: int

    def __len__(self) -> int:
        return len(self.users)


def make_plan(events: int, users: int, seed: int) -> Plan:
    """Every user gets at least one event; ~3% of EventTimes are late (some before the user's last)."""
    rng = random.Random(seed)
    users = max(1, min(users, events))
    order = list(range(users)) + [rng.randrange(users) for _ in range(events - users)]
    rng.shuffle(order)
    counts = [0] * users
    last_time = [-1] * users
    versions, times = array("l"), array("q")
    late_taken: set[tuple[int, int]] = set()
    out_of_order = 0
    for index, user in enumerate(order):
        position = index + 1
        counts[user] += 1
        versions.append(counts[user])
        when = BASE_EVENT_TIME_MS + position * STEP_MS
        if rng.random() < LATE_FRACTION:
            # Late delivery: up to two average per-user gaps back, never on the 50 ms grid.
            while True:
                lag = rng.randrange(1, 2 * users + 2) * STEP_MS + rng.randrange(1, STEP_MS)
                if (user, when - lag) not in late_taken:
                    break
            when -= lag
            late_taken.add((user, when))
        if when < last_time[user]:
            out_of_order += 1
        last_time[user] = max(last_time[user], when)
        times.append(when)
    return Plan(array("l", order), versions, times, out_of_order)


@dataclass(frozen=True)
class Chunk:
    """Positions `first`..`first + len(users) - 1` of a plan, to be rendered by one worker."""

    first: int
    users: array[int]
    versions: array[int]
    event_times: array[int]
    seed: int


def chunks(plan: Plan, size: int, seed: int) -> list[Chunk]:
    """The plan cut into chunks of `size` positions."""
    return [
        Chunk(
            start + 1,
            plan.users[start : start + size],
            plan.versions[start : start + size],
            plan.event_times[start : start + size],
            seed * 1_000_003 + start,
        )
        for start in range(0, len(plan), size)
    ]


@dataclass(frozen=True)
class Rendered:
    """One chunk as COPY text rows without their chain hash, and each row's event digest."""

    prefixes: list[bytes]
    digests: list[bytes]
    items: int
    user_tags: set[int]


def _value(rng: random.Random, tag: str, position: int) -> str | int:
    draw = int(rng.random() * 1_000_000_000)
    if tag == "Tag_Profile_IM_Gender":
        return GENDERS[draw % 3]
    if tag == "Tag_Profile_IM_AllowType":
        return ALLOW[draw % 3]
    if tag == "Tag_Profile_IM_BirthDay":
        return 19500101 + draw % 601130
    if tag in ("Tag_Profile_IM_Language", "Tag_Profile_IM_Level", "Tag_Profile_IM_Role"):
        return draw % 100
    if tag == "Tag_Profile_IM_Image":
        return f"https://img.example.com/a/{draw}.png"
    if tag == "Tag_Profile_IM_Nick":
        return NICKS[draw % 3] + str(draw % 1_000_000)
    return f"{tag[12:].lower()} {position} {draw % 1_000_000}"


def copy_escape(raw: bytes) -> bytes:
    """Escape a field for COPY's text format."""
    if b"\\" not in raw and b"\t" not in raw and b"\n" not in raw and b"\r" not in raw:
        return raw
    return raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def make_event(
    rng: random.Random, position: int, name: str, event_time: int
) -> tuple[dict[str, Any], dict[str, str], datetime]:
    """One delivery of user `name`: its body document (1 to 4 distinct tags), query metadata, receive time."""
    draw = rng.getrandbits(24)
    tags = rng.sample(TAGS, 1 + (draw >> 4) % 4)
    document = {
        "CallbackCommand": PORTRAIT_SET,
        "Operator_Account": name if draw & 15 else "admin",
        "From_Account": name,
        "EventTime": event_time,
        "ProfileItem": [{"Tag": tag, "Value": _value(rng, tag, position)} for tag in tags],
    }
    metadata = {
        "SdkAppid": str(SDKAPPID),
        "CallbackCommand": PORTRAIT_SET,
        "contenttype": "json",
        "ClientIP": f"10.{draw >> 16}.{(draw >> 8) & 255}.{1 + (draw & 255) % 254}",
        "OptPlatform": PLATFORMS[draw % len(PLATFORMS)],
        "peer": "127.0.0.1",
    }
    received_at = BASE_RECEIVED + timedelta(milliseconds=position * STEP_MS + draw % STEP_MS)
    return document, metadata, received_at


def render(chunk: Chunk) -> Rendered:
    """Bodies (canonical JSON), body digests and event digests as the service computes them."""
    rng = random.Random(chunk.seed)
    prefixes: list[bytes] = []
    digests: list[bytes] = []
    user_tags: set[int] = set()
    items_total = 0
    tag_index = {tag: i for i, tag in enumerate(TAGS)}
    for offset, user in enumerate(chunk.users):
        position = chunk.first + offset
        name = user_name(user)
        event_time = chunk.event_times[offset]
        document, metadata, received_at = make_event(rng, position, name, event_time)
        tags = [item["Tag"] for item in document["ProfileItem"]]
        items_total += len(tags)
        user_tags.update(user * 64 + tag_index[tag] for tag in tags)
        body = canonical_json(document)
        body_digest = hashlib.sha256(body).digest()
        digest = event_digest(
            sdkappid=SDKAPPID,
            command=PORTRAIT_SET,
            user_id=name,
            event_time=event_time,
            received_at=received_at,
            metadata=metadata,
            body_digest=body_digest,
        )
        fields = (
            str(position).encode(),
            str(SDKAPPID).encode(),
            PORTRAIT_SET.encode(),
            copy_escape(name.encode()),
            str(chunk.versions[offset]).encode(),
            str(event_time).encode(),
            received_at.isoformat(sep=" ").encode(),
            copy_escape(canonical_json(metadata)),
            copy_escape(body),
            b"\\\\x" + body_digest.hex().encode(),
            b"\\\\x" + digest.hex().encode(),
        )
        prefixes.append(b"\t".join(fields) + b"\t")
        digests.append(digest)
    return Rendered(prefixes, digests, items_total, user_tags)


def chain(rendered: Rendered, previous: bytes) -> tuple[bytes, bytes]:
    """The chunk's complete COPY rows with `hash = sha256(previous || digest)`, and the last hash."""
    out: list[bytes] = []
    sha256 = hashlib.sha256
    for prefix, digest in zip(rendered.prefixes, rendered.digests, strict=True):
        previous = sha256(previous + digest).digest()
        out.append(prefix + b"\\\\x" + previous.hex().encode() + b"\n")
    return b"".join(out), previous
