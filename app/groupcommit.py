"""Group commit: one writer task per process gathers pending deliveries and appends them as a batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from app.eventstore import Appended, EventStore
from app.ingest import NewEvent

log = logging.getLogger(__name__)


# Writers that contend (one per process, on any host) take turns on this advisory lock, and each
# gathers its batch once its turn comes: what arrives while another writer commits joins that
# batch instead of queueing behind it in the database. Batches are twice as large with two
# writers, and PostgreSQL spends less per event. Only a matter of speed: append_events serialises
# appends on its own.
TURN_LOCK = "profile-audit:append"
# A writer takes turns after a batch that waited this long for another writer (seconds), and
# stops after CALM batches in a row that did not: a lone writer would pay two round trips per
# batch for nothing. Two busy writers often find the turn free, so one calm batch proves little.
CONTENDED = 0.0005
CALM = 100
# Takes the turn; answers whether it had to wait for it (the wait's duration includes a round trip).
TAKE_TURN_SQL = """
SELECT CASE WHEN pg_try_advisory_lock(hashtext($1)) THEN false
            ELSE (SELECT true FROM (SELECT pg_advisory_lock(hashtext($1))) AS waited)
       END
"""


class StoreUnavailable(Exception):
    """The event could not be committed (database down, stalled, or the writer stopping)."""


BatchObserver = Callable[[int, float, float], None]
"""Called after each commit with (batch size, seconds, seconds waited for the append lock)."""


class GroupCommitter:
    """Commits concurrently submitted events in shared transactions over one dedicated connection.

    While one batch commits, the next gathers in the queue, so throughput grows with concurrency
    instead of being bounded by one fsync per request. Writers that contend take turns (TURN_LOCK).
    """

    def __init__(
        self,
        dsn: str,
        *,
        store: EventStore | None = None,
        max_batch: int = 500,
        max_pending: int = 20_000,
        connect_timeout: float = 2.0,
        on_batch: BatchObserver | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._store = store or EventStore()
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[NewEvent, asyncio.Future[Appended]]] = asyncio.Queue(max_pending)
        self._connect_timeout = connect_timeout
        self._connection: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_batch = on_batch
        self._drain_timeout = drain_timeout
        self._calm = CALM  # batches in a row that did not wait for another writer

    async def start(self) -> None:
        """Start the writer task."""
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Commit what is already queued, refuse what comes after, and close the connection.

        A database that stalls (a held lock, a silent network) must not keep the process from
        exiting: after `drain_timeout` the writer is cancelled and what is left fails. Those callers
        have had their 503 long before (the reply deadline is shorter).
        """
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self._drain_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            while not self._queue.empty():
                item = self._queue.get_nowait()
                _fail([item], StoreUnavailable("the service is shutting down"))
                self._queue.task_done()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)
            self._connection = None

    async def append(self, event: NewEvent, deadline: float | None = None) -> Appended:
        """Queue `event` and wait until its batch is committed.

        StoreUnavailable if it was not committed, or not within `deadline` seconds (it may still
        be committed later; a redelivery is then a duplicate).
        """
        if self._closing or self._task is None:
            raise StoreUnavailable("the service is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Appended] = loop.create_future()
        future.add_done_callback(_consume)
        try:
            self._queue.put_nowait((event, future))
        except asyncio.QueueFull as exc:
            raise StoreUnavailable("too many deliveries waiting for the database") from exc
        if deadline is None:
            return await future
        expiry = loop.call_later(deadline, _expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    @property
    def pending(self) -> int:
        """Deliveries waiting for a commit."""
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                turns = self._calm < CALM
                turn_wait = await self._take_turn() if turns else 0.0
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                if isinstance(turn_wait, Exception):  # the database is out of reach: so is the append
                    _unavailable(batch, turn_wait)
                    continue
                await self._commit(batch, turn_wait)
                if turns:
                    await self._end_turn()
            except asyncio.CancelledError:
                # Stopped while the batch was in the database: whether it committed is unknown
                # here, and its callers must not wait for an answer that will never come.
                _fail(batch, StoreUnavailable("the service is shutting down"))
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _connect(self) -> asyncpg.Connection[Any]:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(
                self._dsn, timeout=self._connect_timeout, statement_cache_size=16
            )
        return self._connection

    async def _take_turn(self) -> float | Exception:
        """Wait for this writer's turn: the seconds waited for another writer (0.0 when it did not
        wait), or why the database could not be asked."""
        started = time.perf_counter()
        try:
            connection = await self._connect()
            waited = await connection.fetchval(TAKE_TURN_SQL, TURN_LOCK)
        except Exception as exc:  # reported with the batch it fails
            await self._drop_connection()
            return exc
        return time.perf_counter() - started if waited else 0.0

    async def _end_turn(self) -> None:
        if self._connection is None:  # dropped by a failed append, which ended the turn with it
            return
        try:
            await self._connection.execute("SELECT pg_advisory_unlock(hashtext($1))", TURN_LOCK)
        except Exception:  # the next append reconnects, and reports
            await self._drop_connection()  # which ends the turn too

    async def _commit(
        self, batch: list[tuple[NewEvent, asyncio.Future[Appended]]], turn_wait: float = 0.0
    ) -> None:
        events = [event for event, _ in batch]
        started = time.perf_counter()
        try:
            connection = await self._connect()
            results, lock_wait = await self._store.insert_batch(connection, events)
        except asyncpg.PostgresError as exc:
            if _is_data_error(exc) and len(batch) > 1:
                # One bad event must not fail its neighbours: retry them one by one.
                for item in batch:
                    await self._commit([item], turn_wait)
                    turn_wait = 0.0
                return
            if not _is_data_error(exc):
                await self._drop_connection()
            log.error("append failed: %s: %s", exc.__class__.__name__, exc)
            _fail(batch, StoreUnavailable(f"database refused the batch: {exc.__class__.__name__}"))
            return
        except Exception as exc:
            await self._drop_connection()
            _unavailable(batch, exc)
            return
        self._calm = 0 if lock_wait + turn_wait >= CONTENDED else self._calm + 1
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started, lock_wait + turn_wait)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None


def _is_data_error(exc: asyncpg.PostgresError) -> bool:
    """Errors caused by an event's content, not by the database's state.

    Classes 22 (data exception), 23 (integrity constraint) and 54 (program limit exceeded: an index
    entry or a value too large, nesting too deep).
    """
    return str(getattr(exc, "sqlstate", "") or "")[:2] in {"22", "23", "54"}


def _fail(batch: list[tuple[NewEvent, asyncio.Future[Appended]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _unavailable(batch: list[tuple[NewEvent, asyncio.Future[Appended]]], exc: Exception) -> None:
    log.warning("append failed: %s: %s", exc.__class__.__name__, exc)
    _fail(batch, StoreUnavailable(f"database unavailable: {exc.__class__.__name__}"))


def _expire(future: asyncio.Future[Appended]) -> None:
    if not future.done():
        future.set_exception(StoreUnavailable("database did not commit in time"))


def _consume(future: asyncio.Future[Appended]) -> None:
    # A caller that timed out no longer awaits its future: mark the outcome as seen.
    if not future.cancelled():
        future.exception()
