"""The live feed: one LISTEN connection per process fans new events out to subscribers.

A subscriber registers first, then replays the log from its resume position, then takes the live
events queued for it, skipping what the replay already gave: no gap, no duplicate. Each subscriber
has a bounded queue; one that falls too far behind is dropped and resumes by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from app.eventstore import EventStore, StoredEvent

log = logging.getLogger(__name__)

CHANNEL = "profile_audit_events"
PAGE = 500

ReadEvents = Callable[[int, int], Awaitable[list[StoredEvent]]]


class Lagging(Exception):
    """The subscriber fell further behind than its buffer holds."""


class Subscription:
    """One subscriber's bounded queue of live events."""

    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[StoredEvent] = asyncio.Queue(capacity)
        self.lagging = False

    def offer(self, event: StoredEvent) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagging = True


class Feed:
    """Listens for appends on one connection and fans the new events out to subscriptions."""

    def __init__(
        self,
        dsn: str,
        read_events: ReadEvents,
        *,
        capacity: int = 1000,
        poll_seconds: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._read = read_events
        self._capacity = capacity
        self._poll = poll_seconds
        self._subscriptions: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._position = 0
        self._notified_head = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        """Open subscriptions."""
        return len(self._subscriptions)

    async def start(self, head: int) -> None:
        """Start listening; events after `head` will be fanned out."""
        self._position = head
        self._task = asyncio.create_task(self._run(), name="live-feed")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            task, self._task = self._task, None
            # Cancel until it is done: a cancellation that races a completing await can be lost
            # (asyncio.wait_for on Python 3.11), and the loop would then run, and stop() wait, for ever.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1)

    async def _run(self) -> None:
        while True:
            connection: asyncpg.Connection[Any] | None = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
                # A server restart closes the connection without an error here: wake up, notice
                # and listen again on a new one (else notifications stop for good).
                connection.add_termination_listener(self._connection_lost)
                await connection.add_listener(CHANNEL, self._notified)
                while True:
                    await self._fan_out()
                    # asyncio.timeout, not wait_for: a stop() arriving with a notification must win.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll):
                            await self._wake.wait()
                    self._wake.clear()
                    if connection.is_closed():
                        raise ConnectionError("the LISTEN connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live feed lost its connection (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(1)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=1)

    def _connection_lost(self, _connection: object) -> None:
        self._wake.set()

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str) and payload.isdigit():
            self._notified_head = max(self._notified_head, int(payload))
        self._wake.set()

    async def _fan_out(self) -> None:
        """Read what was appended since the last fan-out and offer it to every subscriber."""
        if not self._subscriptions:
            # Nobody to serve: skip the read. A new subscriber replays from the log itself.
            self._position = max(self._position, self._notified_head)
            return
        while True:
            events = await self._read(self._position, PAGE)
            if not events:
                return
            for event in events:
                for subscription in self._subscriptions:
                    subscription.offer(event)
            self._position = events[-1].position
            if len(events) < PAGE:
                return

    async def subscribe(self, after: int, keepalive: float) -> AsyncIterator[StoredEvent | None]:
        """Events after `after`, replayed then live; None every `keepalive` seconds of silence."""
        last = after
        async for event in self._replay(last):  # the bulk of a catch-up, without buffering
            yield event
            last = event.position
        subscription = Subscription(self._capacity)
        self._subscriptions.add(subscription)
        try:
            async for event in self._replay(last):  # what committed while registering
                yield event
                last = event.position
            while True:
                if subscription.lagging:
                    raise Lagging(f"fell more than {self._capacity} events behind")
                try:
                    event = await asyncio.wait_for(subscription.queue.get(), keepalive)
                except TimeoutError:
                    yield None
                    continue
                if event.position <= last:
                    continue
                if event.position > last + 1:  # not expected (positions are dense): re-read
                    async for missed in self._replay(last, until=event.position - 1):
                        yield missed
                        last = missed.position
                yield event
                last = event.position
        finally:
            self._subscriptions.discard(subscription)

    async def _replay(self, after: int, until: int | None = None) -> AsyncIterator[StoredEvent]:
        """Events after `after` (up to `until`) read from the log in pages."""
        while True:
            events = await self._read(after, PAGE)
            for event in events:
                if until is not None and event.position > until:
                    return
                yield event
                after = event.position
            if len(events) < PAGE:
                return


def store_reader(store: EventStore, acquire: Callable[[], Any]) -> ReadEvents:
    """A ReadEvents over pooled connections."""

    async def read(after: int, limit: int) -> list[StoredEvent]:
        async with acquire() as connection:
            return await store.select_events(connection, after, limit)

    return read
