"""`serve --workers N`: a parent that accepts and hands each connection to the least-loaded worker.

uvicorn's own supervisor lets every worker accept from one shared listening socket, and whichever
wakes first takes most of a burst of new keep-alive connections. Here the parent accepts, as
Node's cluster module does, and once a connection's first bytes are in, passes its file
descriptor over a Unix socket pair to the worker holding the fewest open connections (ties taken
in turn); each worker reports every connection it closes with one byte back.

The parent keeps its own descriptor of a connection until the worker reports that it took it,
which a worker does before it reads a byte: a connection handed to a worker that dies or shuts
down before taking it is handed to another worker, with its request still unread, not reset.
When no worker at all is ready (every one of them restarting), the parent holds its connections
until one is, for up to HOLD_WAIT seconds, and accepts no new ones meanwhile.

With read workers (`--read-workers R`), a connection whose first request is a callback goes to the
callback workers and any other to the read workers, and the callback workers run at a lower CPU
priority: under a flood of callbacks, the read API still gets a core when it needs one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any, cast

import uvicorn
from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")

READY = b"R"  # worker to parent: serving, send connections
CLOSED = b"C"  # worker to parent: one connection closed
TAKEN = b"T"  # worker to parent: took the oldest connection handed over, has read none of it yet
STOP_MARGIN = 5.0  # seconds past the graceful-shutdown timeout before a worker is killed
ACCEPT_PAUSE = 1.0  # seconds without accepting after accept() fails (out of file descriptors)
OPENING_WAIT = 10.0  # seconds after the first worker is ready that accepting waits for the others
HOLD_WAIT = 10.0  # seconds a connection is held for a worker to become ready when none is
CALLBACK_LINE = b"POST /callback"  # how a connection's first request starts when it is a callback
CALLBACK_NICENESS = 10  # added to the callback workers' niceness when read workers take the rest
CALLBACKS, READS = "callbacks", "reads"  # the kinds of worker, and of connection, when split

_spawn = multiprocessing.get_context("spawn")


def serve_app(app: str, *, host: str, port: int, workers: int, log_level: str, read_workers: int = 0) -> None:
    """Serve the ASGI app factory `app` as `profile-audit serve` does: the same uvicorn settings,
    and with more than one process, the Supervisor (the benchmark's echo and insert apps run so too)."""
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "app.httpprotocol:HttpProtocol",
        "access_log": False,
        "log_level": log_level,
        "timeout_graceful_shutdown": 10,
    }
    if workers == 1 and read_workers == 0:
        uvicorn.run(app, **options)
    else:
        Supervisor(Config(app, **options), workers, read_workers).run()


def least_loaded(open_connections: Sequence[int | None], last: int) -> int | None:
    """The worker with the fewest open connections (None: not ready), ties taken in turn after `last`."""
    best: int | None = None
    fewest = 0
    count = len(open_connections)
    for step in range(1, count + 1):
        index = (last + step) % count
        load = open_connections[index]
        if load is not None and (best is None or load < fewest):
            best, fewest = index, load
    return best


def connection_kind(first: bytes) -> str:
    """CALLBACKS when a connection's first bytes start a callback request, else READS.

    Told from the bytes in so far: a client that sends fewer than the request line's first 14 goes
    to a read worker, which serves a callback as well as any worker.
    """
    return CALLBACKS if first.startswith(CALLBACK_LINE) else READS


def open_counts(kind: str | None, workers: Sequence[tuple[str | None, int | None]]) -> list[int | None]:
    """Per (kind, open connections or None when not ready) worker, its open connections if it takes
    `kind`, else None; when no worker of `kind` is ready (one restarting), every ready worker's."""
    counts = [load if taken == kind else None for taken, load in workers]
    return counts if any(count is not None for count in counts) else [load for _, load in workers]


class Worker:
    """The parent's end of one worker process: its kind, channel and open connection count."""

    def __init__(self, config: Config, kind: str | None) -> None:
        self.kind = kind  # None: takes every connection
        self.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        niceness = CALLBACK_NICENESS if kind == CALLBACKS else 0
        self.process: SpawnProcess = _spawn.Process(target=_worker_main, args=(config, child_end, niceness))
        self.process.start()
        child_end.close()
        self.channel.setblocking(False)
        self.ready = False  # sent READY and has not closed its channel since
        self.started = False  # sent READY at some time
        self.open = 0
        # Handed over, not yet taken (oldest first), with the kind each was handed over as.
        self.unclaimed: collections.deque[tuple[socket.socket, str | None]] = collections.deque()


class Supervisor:
    """Runs `workers` uvicorn worker processes of `config` (and `read_workers` for all but callbacks)
    behind one listening socket of its own."""

    def __init__(self, config: Config, workers: int, read_workers: int = 0) -> None:
        self.config = config
        self.workers: list[Worker] = []
        self.count = workers
        self.read_count = read_workers
        self.selector = selectors.DefaultSelector()
        # Accepted, nothing received yet: when each is given up if still silent. One timeout for
        # all, so insertion order is deadline order.
        self.waiting: dict[socket.socket, float] = {}
        # Requests in, no worker ready to take them: (connection, kind, when it is given up), oldest first.
        self.held: collections.deque[tuple[socket.socket, str | None, float]] = collections.deque()
        self.retiring: list[Worker] = []  # after SIGHUP: replaced one at a time
        self.last = workers + read_workers - 1
        self.listening = False
        self.resume_at: float | None = None  # when accepting resumes after a pause
        # At the start, accept once every worker is ready: keep-alive connections that came in while
        # one was, Tencent's or a load test's, would otherwise all stay on that one.
        self.opening = True
        self.stopping = False
        self.signalled: str | None = None
        self.hangup = False
        self.failed = False

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (SIGHUP: replace the workers one by one); SystemExit(STARTUP_FAILURE)
        when a worker cannot start."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        try:
            self.listener = self.config.bind_socket()  # logs "Uvicorn running on …"
            self.listener.listen(self.config.backlog)
            self.listener.setblocking(False)
            logger.info("Started parent process [%d]", os.getpid())
            self.selector.register(wake_read, selectors.EVENT_READ, (0, lambda: wake_read.recv(64)))
            kinds: Sequence[str | None] = [None] * self.count
            if self.read_count:
                kinds = [CALLBACKS] * self.count + [READS] * self.read_count
                logger.info(
                    "callback workers: %d (niceness +%d); read workers: %d",
                    self.count,
                    CALLBACK_NICENESS,
                    self.read_count,
                )
            for kind in kinds:
                self.workers.append(self._start(kind))
            self._loop()
            if self.signalled:
                logger.info("Received %s, exiting.", self.signalled)
        finally:
            self.stopping = True
            self._stop()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
            self.selector.close()
        if self.failed:
            raise SystemExit(STARTUP_FAILURE)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = self.signalled or signal.Signals(signum).name
        self.stopping = True

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self.hangup = True

    def _loop(self) -> None:
        while not self.stopping:
            first_silent = next(iter(self.waiting.values()), None)
            first_held = self.held[0][2] if self.held else None
            wakes = [t for t in (self.resume_at, first_silent, first_held) if t is not None]
            events = self.selector.select(max(0.0, min(wakes) - time.monotonic()) if wakes else None)
            if self.hangup:
                self.hangup = False
                logger.info("Received SIGHUP, replacing the workers one by one.")
                self.retiring = list(self.workers)
                self._retire_next()
            self._drop_silent()
            self._drop_held()
            if self.resume_at is not None and time.monotonic() >= self.resume_at:
                self.resume_at = None
                self.opening = False
                self._update_listening()
            # Reports and exits first, so that a connection is handed over counting every other
            # connection that closed before its request came in.
            callbacks: list[tuple[int, Callable[[], object]]] = sorted(
                (key.data for key, _ in events), key=lambda data: data[0]
            )
            for _, callback in callbacks:
                if self.stopping:
                    return
                callback()

    def _start(self, kind: str | None) -> Worker:
        worker = Worker(self.config, kind)
        self.selector.register(worker.channel, selectors.EVENT_READ, (0, lambda: self._report(worker)))
        self.selector.register(worker.process.sentinel, selectors.EVENT_READ, (0, lambda: self._reap(worker)))
        return worker

    def _accept(self) -> None:
        while self.listening:  # not stopped by a callback of the same select
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: accept() would fail again at once
                logger.error("accept failed, pausing for %.0f s: %s", ACCEPT_PAUSE, exc)
                self.resume_at = time.monotonic() + ACCEPT_PAUSE
                self._update_listening()
                return
            # Handed over once its request comes in: a connection closed unused (a port check,
            # wrk's probe) never counts for a worker, and the choice sees the latest closes.
            self.waiting[connection] = time.monotonic() + self.config.timeout_keep_alive
            self.selector.register(
                connection, selectors.EVENT_READ, (1, lambda c=connection: self._readable(c))
            )

    def _readable(self, connection: socket.socket) -> None:
        try:
            first = connection.recv(len(CALLBACK_LINE), socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            first = b""
        self.selector.unregister(connection)
        del self.waiting[connection]
        if first:
            self._hand_over(connection, connection_kind(first) if self.read_count else None)
        else:  # closed before sending anything
            connection.close()

    def _drop_silent(self) -> None:
        # A client that connects and sends nothing (HTTP clients send at once) is not kept for ever.
        now = time.monotonic()
        while self.waiting:
            connection, deadline = next(iter(self.waiting.items()))
            if deadline > now:
                return
            del self.waiting[connection]
            self.selector.unregister(connection)
            connection.close()

    def _drop_held(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][2] <= now:
            connection, _kind, _deadline = self.held.popleft()
            logger.warning("no worker became ready within %.0f s; closed a connection", HOLD_WAIT)
            connection.close()

    def _retire_next(self) -> None:
        # Once the previous one's replacement is serving, so that the others keep serving meanwhile.
        while self.retiring:
            worker = self.retiring.pop(0)
            if worker in self.workers and worker.process.exitcode is None:
                worker.process.terminate()
                return

    def _hand_over(
        self, connection: socket.socket, kind: str | None, held_until: float | None = None
    ) -> None:
        loads = open_counts(kind, [(w.kind, w.open if w.ready else None) for w in self.workers])
        while (index := least_loaded(loads, self.last)) is not None:
            worker = self.workers[index]
            try:
                socket.send_fds(worker.channel, [b"c"], [connection.fileno()])
            except OSError:  # its channel is full (a stuck worker) or closed (a dead one): another
                loads[index] = None
                continue
            worker.open += 1
            worker.unclaimed.append((connection, kind))
            self.last = index
            logger.debug("handed a connection to worker [%d]", worker.process.pid)
            return
        if self.stopping:
            connection.close()
            return
        if held_until is None:
            logger.warning(
                "no worker is ready; holding a connection for the next one (up to %.0f s)", HOLD_WAIT
            )
            held_until = time.monotonic() + HOLD_WAIT
        self.held.append((connection, kind, held_until))

    def _hand_held(self) -> None:
        # A worker is ready: what waited for one goes out now, oldest first.
        for _ in range(len(self.held)):
            connection, kind, held_until = self.held.popleft()
            self._hand_over(connection, kind, held_until)

    def _hand_on(self, worker: Worker) -> None:
        # The worker reads no more from its channel: what it has not taken goes to another one.
        while worker.unclaimed:
            connection, kind = worker.unclaimed.popleft()
            worker.open = max(0, worker.open - 1)
            logger.warning("worker [%d] did not take a connection; handing it to another", worker.process.pid)
            self._hand_over(connection, kind)

    def _report(self, worker: Worker) -> None:
        if worker.channel.fileno() < 0:  # reaped by a callback of the same select
            return
        try:
            data = worker.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is exiting; its sentinel says when it is gone
            worker.ready = False
            self.selector.unregister(worker.channel)
            self._hand_on(worker)
        else:
            for _ in range(min(data.count(TAKEN), len(worker.unclaimed))):
                worker.unclaimed.popleft()[0].close()
            worker.open = max(0, worker.open - data.count(CLOSED))
            if READY in data:
                worker.ready = worker.started = True
                self._hand_held()
                if worker not in self.retiring:
                    self._retire_next()
                if self.opening and all(w.ready for w in self.workers):
                    self.opening, self.resume_at = False, None
                elif self.opening and self.resume_at is None:
                    self.resume_at = time.monotonic() + OPENING_WAIT
        self._update_listening()

    def _reap(self, worker: Worker) -> None:
        worker.process.join()
        self.selector.unregister(worker.process.sentinel)
        with contextlib.suppress(KeyError):
            self.selector.unregister(worker.channel)
        worker.channel.close()
        worker.ready = False
        self._hand_on(worker)
        code = worker.process.exitcode
        # Exiting with an error before serving (STARTUP_FAILURE: the app or its lifespan failed, or
        # the factory raised) would happen again on every restart: stop instead, as uvicorn does.
        if not worker.started and code is not None and code > 0 and not self.stopping:
            logger.error("Child process [%s] failed to start (exit %d), stopping.", worker.process.pid, code)
            self.failed = self.stopping = True
        if not self.stopping:
            logger.warning("Child process [%s] died (exit %s), starting another", worker.process.pid, code)
            self.workers[self.workers.index(worker)] = self._start(worker.kind)
        self._update_listening()

    def _update_listening(self) -> None:
        listen = (
            not self.stopping
            and not self.opening
            and self.resume_at is None
            and any(w.ready for w in self.workers)
        )
        if listen and not self.listening:
            self.selector.register(self.listener, selectors.EVENT_READ, (2, self._accept))
        elif self.listening and not listen:
            self.selector.unregister(self.listener)
        self.listening = listen

    def _stop(self) -> None:
        with contextlib.suppress(AttributeError):  # bind_socket exited before there was one
            self.listener.close()
        for connection in self.waiting:
            connection.close()
        for connection, _kind, _deadline in self.held:
            connection.close()
        for worker in self.workers:
            if worker.process.exitcode is None:
                worker.process.terminate()
        grace = self.config.timeout_graceful_shutdown  # None: uvicorn waits for every connection
        deadline = None if grace is None else time.monotonic() + grace + STOP_MARGIN
        for worker in self.workers:
            worker.process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.process.exitcode is None:
                logger.error("Child process [%s] still running after SIGTERM, killing it", worker.process.pid)
                worker.process.kill()
                worker.process.join()
            worker.channel.close()
            for connection, _kind in worker.unclaimed:
                connection.close()


class ChannelServer(Server):
    """A uvicorn server whose connections come from its parent over `channel`, not from a listener."""

    def __init__(self, config: Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self.connecting: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start the app without a listening socket, then take connections from the channel."""
        await super().startup(sockets=[])
        config, state, lifespan = self.config, self.server_state, self.lifespan
        protocol_class = _reporting(config.http_protocol_class, self._report_closed)

        def create_protocol() -> asyncio.Protocol:
            return protocol_class(config=config, server_state=state, app_state=lifespan.state)  # type: ignore[call-arg]

        self.create_protocol = create_protocol
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._receive)
        with contextlib.suppress(OSError):
            self.channel.send(READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Take no more connections, then shut down as uvicorn does."""
        asyncio.get_running_loop().remove_reader(self.channel.fileno())
        # The parent sees the end of the channel and hands over no more connections, even while
        # this worker finishes its requests (after a SIGTERM of its own, or systemd's to all).
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_WR)
        await super().shutdown(sockets=sockets)

    def _receive(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, 64, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the parent is gone: nobody hands over connections any more
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
                self.should_exit = True
                return
            # Before any byte is read: until the parent hears this, it holds the connections too, and
            # hands them to another worker if this one goes. Only a hung parent leaves its buffer full.
            with contextlib.suppress(OSError):
                self.channel.send(TAKEN * len(fds))
            for fd in fds:
                task = asyncio.get_running_loop().create_task(self._connect(socket.socket(fileno=fd)))
                self.connecting.add(task)
                task.add_done_callback(self.connecting.discard)

    async def _connect(self, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self.create_protocol, sock)
        except Exception:
            logger.exception("could not take over a connection")
            sock.close()
            self._report_closed()

    def _report_closed(self) -> None:
        # A full channel (the parent not reading) or a closed one (the parent gone) only costs balance.
        with contextlib.suppress(OSError):
            self.channel.send(CLOSED)


def _reporting(protocol_class: type[asyncio.Protocol], report: Callable[[], None]) -> type[asyncio.Protocol]:
    """`protocol_class`, calling `report` after each connection_lost."""

    def connection_lost(self: asyncio.Protocol, exc: Exception | None) -> None:
        try:
            protocol_class.connection_lost(self, exc)
        finally:
            report()

    namespace: dict[str, Any] = {"connection_lost": connection_lost}
    return cast("type[asyncio.Protocol]", type(protocol_class.__name__, (protocol_class,), namespace))


def _worker_main(config: Config, channel: socket.socket, niceness: int) -> None:
    """A worker process: serve what comes down `channel` until SIGTERM, SIGINT or the parent's exit."""
    if niceness:
        os.nice(niceness)
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT re-raised after a graceful shutdown
        ChannelServer(config, channel).run()
