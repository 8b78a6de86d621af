"""`profile-audit export` / `import`: the event log as JSON Lines, out and back in.

An exported line is exactly one item of `GET /events` (`app.api.events.event_out`). Import takes
such lines through the endpoint's own checks — `authenticate` against the configured SDKAppIDs
(no `Sign`: a file is not a live delivery) and `decode_callback` on the payload, with the line's
metadata as the query string and its `received_at` — and appends them with the event store in
batches, so de-duplication is the endpoint's too: a delivery already in the log (same SDKAppID,
same JSON content) is counted as a duplicate and not stored again. The derived event is the
exported one (same command, metadata, payload and `received_at`), so its digest is the same, and
an export imported in order into an empty log reproduces positions and chain hashes as well.

Both directions stream: export reads keyset pages of the log, import appends fixed-size batches;
memory stays flat in the size of the log or the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec

from app.api.events import event_out
from app.eventstore import Appended, EventStore
from app.groupcommit import _is_data_error
from app.ingest import CallbackError, NewEvent, authenticate, decode_callback

EXPORT_PAGE = 5000
IMPORT_BATCH = 1000

# Session-local keys of the deliveries a dry run counted as new, so that a later batch of the
# same file sees them as duplicates although every batch of a dry run is rolled back.
DRY_RUN_SEEN = "profile_audit_import_seen"
DRY_RUN_SEEN_DDL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {DRY_RUN_SEEN} (
    sdkappid bigint, body_digest bytea, PRIMARY KEY (sdkappid, body_digest)
)
"""
DRY_RUN_SEEN_SELECT = f"""
SELECT k.idx FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS k(sdkappid, body_digest, idx)
  JOIN {DRY_RUN_SEEN} s ON s.sdkappid = k.sdkappid AND s.body_digest = k.body_digest
"""
DRY_RUN_SEEN_INSERT = f"""
INSERT INTO {DRY_RUN_SEEN} SELECT * FROM unnest($1::bigint[], $2::bytea[]) ON CONFLICT DO NOTHING
"""

Write = Callable[[bytes], object]
OnReject = Callable[[int, str], None]


class ExportReport(msgspec.Struct, frozen=True):
    """What an export wrote: how many events, and the last position written (or `after`)."""

    events: int
    last_position: int


async def export_events(
    connection: asyncpg.Connection[Any],
    write: Write,
    *,
    after: int = 0,
    page_size: int = EXPORT_PAGE,
    store: EventStore | None = None,
) -> ExportReport:
    """Write the events after `after` up to the log head as it is now, one JSON line each.

    `write` gets one page of lines at a time. Pages are keyset reads in position order; since
    positions follow commit order, a page never misses an event that commits while the export
    runs, and events appended after the export started are left for the next one.
    """
    store = store or EventStore()
    end, _ = await store.head(connection)
    encoder = msgspec.json.Encoder()
    position, count = after, 0
    buffer = bytearray()
    while position < end:
        events = await store.select_events(connection, position, min(page_size, end - position))
        if not events:  # pragma: no cover - positions up to the head are dense and committed
            break
        buffer.clear()
        for event in events:
            encoder.encode_into(event_out(event), buffer, len(buffer))
            buffer.extend(b"\n")
        write(bytes(buffer))
        position = events[-1].position
        count += len(events)
    return ExportReport(events=count, last_position=max(position, after))


class ExportRecord(msgspec.Struct, frozen=True):
    """The fields of an exported line that import reads.

    `payload` is kept as the exact JSON text of the line. `command`, `user_id`, `event_time` and
    `digest` are derived again from the payload and metadata and must agree when given;
    `position`, `user_version` and `hash` are assigned again by the log and not read.
    """

    sdkappid: int
    received_at: Annotated[datetime, msgspec.Meta(tz=True)]
    metadata: dict[str, str]
    payload: msgspec.Raw
    command: str | msgspec.UnsetType = msgspec.UNSET
    user_id: str | msgspec.UnsetType | None = msgspec.UNSET
    event_time: int | msgspec.UnsetType | None = msgspec.UNSET
    digest: str | msgspec.UnsetType = msgspec.UNSET


class Rejected(Exception):
    """A line that cannot be imported, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_record_decoder = msgspec.json.Decoder(ExportRecord)


def parse_line(line: bytes, *, sdkappids: tuple[int, ...], max_body_bytes: int) -> NewEvent:
    """The event an exported line describes, checked like a delivery; Rejected(reason) if not."""
    try:
        record = _record_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise Rejected(f"not an export record: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise Rejected(f"not JSON: {exc}") from exc
    try:
        sdkappid = authenticate(record.metadata, sdkappids=sdkappids, token=None, now=0.0)
    except CallbackError as exc:
        raise Rejected(exc.reason) from exc
    if sdkappid != record.sdkappid:
        raise Rejected(f"sdkappid {record.sdkappid} differs from the metadata's SdkAppid {sdkappid}")
    raw = bytes(record.payload)
    if len(raw) > max_body_bytes:
        raise Rejected(f"payload is larger than {max_body_bytes} bytes")
    try:
        event = decode_callback(record.metadata, raw, sdkappid=sdkappid, received_at=record.received_at)
    except CallbackError as exc:
        raise Rejected(exc.reason) from exc
    derived: list[tuple[str, object, object]] = [
        ("command", record.command, event.command),
        ("user_id", record.user_id, event.user_id),
        ("event_time", record.event_time, event.event_time),
        (
            "digest",
            record.digest.lower() if isinstance(record.digest, str) else record.digest,
            event.digest.hex(),
        ),
    ]
    differing = [name for name, given, actual in derived if given is not msgspec.UNSET and given != actual]
    if differing:
        raise Rejected(f"{', '.join(differing)} not what the payload and metadata give (edited?)")
    return event


class ImportReport(msgspec.Struct):
    """What an import did (or, in a dry run, would do)."""

    new: int = 0
    duplicate: int = 0
    rejected: int = 0

    def summary(self) -> str:
        """`new N, duplicate N, rejected N`."""
        return f"new {self.new}, duplicate {self.duplicate}, rejected {self.rejected}"


Batch = Sequence[tuple[int, NewEvent]]


async def import_lines(
    connection: asyncpg.Connection[Any],
    lines: Iterable[bytes],
    *,
    sdkappids: tuple[int, ...],
    max_body_bytes: int,
    dry_run: bool = False,
    batch_size: int = IMPORT_BATCH,
    on_reject: OnReject | None = None,
    store: EventStore | None = None,
) -> ImportReport:
    """Append the events of exported lines (line numbers from 1; blank lines are skipped).

    A line that is not an export record or fails the endpoint's checks is counted as rejected,
    reported to `on_reject(line_number, reason)`, and the import goes on. Each batch is one
    append (one transaction, the append lock held for that call only). In a dry run every batch
    is rolled back: the counts are those a real import would give, and nothing is written.
    """
    store = store or EventStore()
    report = ImportReport()

    def reject(number: int, reason: str) -> None:
        report.rejected += 1
        if on_reject is not None:
            on_reject(number, " ".join(reason.split()))

    async def flush(batch: list[tuple[int, NewEvent]]) -> None:
        if dry_run:
            batch = await _drop_seen(connection, batch, report)
        outcomes = await _append(connection, store, batch, commit=not dry_run)
        for (number, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, str):
                reject(number, outcome)
            elif outcome.duplicate:
                report.duplicate += 1
            else:
                report.new += 1
        if dry_run:
            new = [
                e
                for (_, e), o in zip(batch, outcomes, strict=True)
                if isinstance(o, Appended) and not o.duplicate
            ]
            await connection.execute(
                DRY_RUN_SEEN_INSERT, [e.sdkappid for e in new], [e.body_digest for e in new]
            )

    if dry_run:
        await connection.execute(DRY_RUN_SEEN_DDL)
    try:
        pending: list[tuple[int, NewEvent]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                event = parse_line(line, sdkappids=sdkappids, max_body_bytes=max_body_bytes)
            except Rejected as exc:
                reject(number, exc.reason)
                continue
            pending.append((number, event))
            if len(pending) >= batch_size:
                await flush(pending)
                pending = []
        if pending:
            await flush(pending)
    finally:
        if dry_run and not connection.is_closed():
            with contextlib.suppress(asyncpg.PostgresError):  # never hide the error that got here
                await connection.execute(f"DROP TABLE IF EXISTS {DRY_RUN_SEEN}")
    return report


async def _drop_seen(
    connection: asyncpg.Connection[Any], batch: list[tuple[int, NewEvent]], report: ImportReport
) -> list[tuple[int, NewEvent]]:
    """A dry run's batch without the deliveries an earlier batch of it counted as new."""
    rows = await connection.fetch(
        DRY_RUN_SEEN_SELECT, [e.sdkappid for _, e in batch], [e.body_digest for _, e in batch]
    )
    seen = {int(row["idx"]) - 1 for row in rows}
    report.duplicate += len(seen)
    return [item for i, item in enumerate(batch) if i not in seen]


async def _append(
    connection: asyncpg.Connection[Any], store: EventStore, batch: Batch, *, commit: bool
) -> list[Appended | str]:
    """Append a batch in one transaction (rolled back unless `commit`): each event's outcome,
    or the reason the database refused it. One refused event does not fail its neighbours."""
    if not batch:
        return []
    transaction = connection.transaction()
    await transaction.start()
    try:
        appended: list[Appended | str] = list(await store.insert_events(connection, [e for _, e in batch]))
    except asyncpg.PostgresError as exc:
        await transaction.rollback()
        if not _is_data_error(exc):
            raise
        if len(batch) == 1:
            return [f"refused by the database: {exc.__class__.__name__}: {exc}"]
        outcomes: list[Appended | str] = []
        for item in batch:
            outcomes.extend(await _append(connection, store, [item], commit=commit))
        return outcomes
    except BaseException:
        await transaction.rollback()
        raise
    if commit:
        await transaction.commit()
    else:
        await transaction.rollback()
    return appended
