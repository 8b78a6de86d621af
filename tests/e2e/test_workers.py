"""`serve --workers 2`: the parent hands each new connection to the worker holding the fewest.

Which worker holds a connection is read from the workers' sockets (psutil), as bench/readbench.py
does. The parent hands a connection over when its first request comes in. One that a client
closes counts until its worker has reported the close; the tests wait for the worker to have
closed its end (it reports before it closes) before opening new ones.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

import psutil
import pytest

from app.workers import CALLBACK_NICENESS
from tests.conftest import (
    AUTH,
    REPO_ROOT,
    LiveServer,
    free_port,
    portrait_body,
    portrait_query,
    running_server,
    serve_env,
)
from tests.faults.load import worker_processes

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, within: float = 30) -> T:
    """Poll `condition` until it returns something true; AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        time.sleep(0.05)
    return result


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        self.http.connect()
        assert self.http.sock is not None
        self.port: int = self.http.sock.getsockname()[1]

    def get(self) -> str:
        """GET /healthz on this connection; the answering process (X-Request-ID's per-process prefix)."""
        self.send()
        return self.answer()

    def send(self) -> None:
        """Send GET /healthz."""
        self.http.request("GET", "/healthz")

    def answer(self) -> str:
        """Read the answer to `send`; the answering process."""
        reply = self.http.getresponse()
        reply.read()
        assert reply.status == 200
        assert reply.getheader("connection") != "close"
        return reply.getheader("x-request-id", "").split("-")[0]

    def close(self) -> None:
        self.http.close()


def held(serve: psutil.Process, ports: Collection[int]) -> dict[int, set[int]]:
    """For each live worker of `serve`, the client `ports` whose connections it holds."""
    found = {}
    for worker in worker_processes(serve):
        with contextlib.suppress(psutil.Error):
            connections = worker.net_connections("tcp")
            found[worker.pid] = {c.raddr.port for c in connections if c.raddr and c.raddr.port in ports}
    return found


def wait_until_closed(serve: psutil.Process, ports: Collection[int]) -> None:
    """Wait until no worker holds a connection from `ports` any more."""
    wait_for(lambda: not any(held(serve, ports).values()), f"the workers to close {sorted(ports)}")


def wait_until_serving(server: LiveServer, serve: psutil.Process, count: int) -> None:
    """One-request connections until `count` different workers have answered, then wait for their close."""
    answered: set[str] = set()
    ports: set[int] = set()
    deadline = time.monotonic() + 60
    while len(answered) < count:
        assert time.monotonic() < deadline, f"only {len(answered)} workers answered in 60 s"
        client = Client(server.url)
        answered.add(client.get())
        ports.add(client.port)
        client.close()
    wait_until_closed(serve, ports)


def test_new_connections_go_to_the_worker_with_the_fewest(live_server: LiveServer) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)

    # A connection that sends nothing (a port check, wrk's probe) stays with the parent.
    silent = socket.create_connection(("127.0.0.1", int(live_server.url.rsplit(":", 1)[1])))
    silent_port = silent.getsockname()[1]
    wait_for(
        lambda: any(c.raddr and c.raddr.port == silent_port for c in serve.net_connections("tcp")),
        "the parent to accept the silent connection",
    )
    assert not any(held(serve, {silent_port}).values())
    silent.close()

    # A burst: six connections, a request on each before the first answer, as wrk's start.
    clients = [Client(live_server.url) for _ in range(6)]
    for client in clients:
        client.send()
    for client in clients:
        client.answer()
    split = held(serve, {c.port for c in clients})
    assert sorted(len(ports) for ports in split.values()) == [3, 3], split

    # Two of one worker's connections close: the next two new ones go to that worker.
    drained, other = sorted(split)
    closing = [c for c in clients if c.port in split[drained]][:2]
    for client in closing:
        client.close()
        clients.remove(client)
    wait_until_closed(serve, {c.port for c in closing})
    fresh = [Client(live_server.url) for _ in range(2)]
    for client in fresh:
        client.get()
    assert held(serve, {c.port for c in fresh}) == {drained: {c.port for c in fresh}, other: set()}
    clients += fresh
    split = held(serve, {c.port for c in clients})
    assert sorted(len(ports) for ports in split.values()) == [3, 3], split

    # SIGTERM with keep-alive connections open: a graceful stop, exit 0, no worker left behind.
    workers = worker_processes(serve)
    assert live_server.stop() == 0, live_server.log()
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    for client in clients:
        client.close()


def kill_and_wait_for_replacement(
    server: LiveServer, serve: psutil.Process, victim: int, survivor: int
) -> int:
    """SIGKILL the worker `victim`; new connections (GET /healthz) go to `survivor` until a
    replacement takes one (asserted); the replacement's pid, once the probes' connections closed."""
    os.kill(victim, signal.SIGKILL)
    # Gone once the parent has reaped it, and so no longer given connections.
    wait_for(lambda: not psutil.pid_exists(victim), f"worker {victim} to be reaped")
    ports: set[int] = set()
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "no replacement worker took a connection in 60 s"
        client = Client(server.url)
        client.get()
        holders = [pid for pid, held_ports in held(serve, {client.port}).items() if held_ports]
        ports.add(client.port)
        client.close()
        assert len(holders) == 1 and holders[0] != victim, holders
        if holders[0] != survivor:
            break
    wait_until_closed(serve, ports)
    return holders[0]


@pytest.mark.faults
def test_a_killed_worker_is_replaced_and_takes_new_connections(live_server: LiveServer) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)
    victim, survivor = sorted(w.pid for w in worker_processes(serve))
    replacement = kill_and_wait_for_replacement(live_server, serve, victim, survivor)

    # The replacement starts with no connections, the survivor with none left: a burst is split.
    clients = [Client(live_server.url) for _ in range(4)]
    for client in clients:
        client.get()
    split = held(serve, {c.port for c in clients})
    assert {pid: len(p) for pid, p in split.items()} == {survivor: 2, replacement: 2}, split
    for client in clients:
        client.close()
    assert live_server.stop() == 0, live_server.log()


def test_a_worker_shutting_down_on_its_own_gets_no_new_connections(live_server: LiveServer) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)
    idle = [Client(live_server.url) for _ in range(4)]
    for client in idle:
        client.get()
    # A live feed keeps its worker in its graceful shutdown (up to 10 s) after a SIGTERM of its own.
    stream = Client(live_server.url)
    stream.http.request("GET", "/events/stream", headers=AUTH)
    assert stream.http.getresponse().status == 200
    split = held(serve, {c.port for c in [*idle, stream]})
    assert sorted(len(ports) for ports in split.values()) == [2, 3], split
    (stopping,) = (pid for pid, ports in split.items() if stream.port in ports)
    (other,) = set(split) - {stopping}
    os.kill(stopping, signal.SIGTERM)
    # Its shutdown closes its idle connections after it has told the parent to send no more.
    wait_for(lambda: held(serve, {c.port for c in idle})[stopping] == set(), "the idle connections closed")

    # Holding the stream alone, it has fewer connections than the other worker's 2; still all new
    # ones go to the other (one sent to the stopping worker would never be answered).
    fresh = [Client(live_server.url) for _ in range(3)]
    for client in fresh:
        client.get()
    assert held(serve, {c.port for c in fresh}) == {stopping: set(), other: {c.port for c in fresh}}

    stream.close()  # its worker can finish now; the parent starts another one
    replacement = wait_for(
        lambda: {w.pid for w in worker_processes(serve)} - {stopping, other}, "a replacement worker"
    )
    assert len(replacement) == 1 and not psutil.pid_exists(stopping)
    for client in [*idle, *fresh]:
        client.close()
    assert live_server.stop() == 0, live_server.log()


@pytest.mark.faults
def test_workers_shut_down_when_the_parent_is_killed(live_server: LiveServer) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)
    workers = worker_processes(serve)
    serve.kill()
    live_server.process.wait(30)

    def all_exited() -> bool:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                if worker.status() != psutil.STATUS_ZOMBIE:
                    return False
        return True

    # Each sees its channel to the parent close, and shuts down as on SIGTERM (10 s grace at most).
    wait_for(all_exited, "the orphaned workers to exit")


def test_a_worker_that_cannot_start_stops_the_supervisor() -> None:
    run = (
        "import uvicorn; from app.workers import Supervisor;"
        f" Supervisor(uvicorn.Config('no_such_module_here:app', port={free_port()}), 2).run()"
    )
    result = subprocess.run(
        [sys.executable, "-c", run], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 3, result.stderr  # uvicorn's STARTUP_FAILURE
    assert "failed to start" in result.stderr
    assert "starting another" not in result.stderr, "a worker that cannot start is not restarted"


def test_sighup_replaces_the_workers_one_by_one(live_server: LiveServer) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)
    originals = {w.pid for w in worker_processes(serve)}
    # A keep-alive client that keeps asking throughout: one worker serves while the other is replaced.
    client = Client(live_server.url)
    client.get()
    serve.send_signal(signal.SIGHUP)
    answered = 0

    def replaced() -> bool:
        nonlocal answered, client
        try:
            client.get()
            answered += 1
        except (ConnectionError, http.client.HTTPException):  # its worker was the one replaced
            client.close()
            client = Client(live_server.url)
        workers = {w.pid for w in worker_processes(serve)}
        return len(workers) == 2 and not workers & originals

    wait_for(replaced, "two new workers in place of the old ones", within=60)
    assert serve.is_running() and answered > 0
    wait_until_serving(live_server, serve, 2)
    client.close()
    assert live_server.stop() == 0, live_server.log()


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(
    live_server: LiveServer,
) -> None:
    serve = psutil.Process(live_server.process.pid)
    wait_until_serving(live_server, serve, 2)
    silent = socket.create_connection(("127.0.0.1", int(live_server.url.rsplit(":", 1)[1])))
    silent.settimeout(30)
    opened = time.monotonic()
    assert silent.recv(1) == b""  # the parent closed it (uvicorn's timeout_keep_alive: 5 s)
    assert time.monotonic() - opened >= 4
    silent.close()
    assert Client(live_server.url).get()  # and still serves
    assert live_server.stop() == 0, live_server.log()


def port_of(connection: http.client.HTTPConnection) -> int:
    """The client-side port of an open connection."""
    assert connection.sock is not None
    return int(connection.sock.getsockname()[1])


def exchange(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> bytes:
    """One request on a keep-alive connection; its 200 answer's body."""
    connection.request(method, path, body=body, headers={**AUTH, "Content-Type": "application/json"})
    reply = connection.getresponse()
    content = reply.read()
    assert reply.status == 200, (method, path, reply.status, content)
    return content


def test_read_workers_take_all_but_callbacks_and_the_callback_workers_yield_the_cpu(
    database_url: str, tmp_path: Path
) -> None:
    with running_server(serve_env(database_url), tmp_path, workers=2, read_workers=1) as server:
        serve = psutil.Process(server.process.pid)
        workers = wait_for(lambda: len(found := worker_processes(serve)) == 3 and found, "three workers")
        niceness = {w.pid: w.nice() - serve.nice() for w in workers}
        assert sorted(niceness.values()) == [0, CALLBACK_NICENESS, CALLBACK_NICENESS], niceness
        callback_workers = {pid for pid, added in niceness.items() if added}
        (reader,) = set(niceness) - callback_workers

        parts = urlsplit(server.url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        posting = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(4)]
        for number, connection in enumerate(posting):
            body = json.dumps(portrait_body(f"split{number}")).encode()
            exchange(connection, "POST", f"/callback?{urlencode(portrait_query())}", body)
        reading = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(3)]
        for connection, path in zip(reading, ["/users/split0/profile", "/healthz", "/metrics"], strict=True):
            exchange(connection, "GET", path)

        posted, read = {port_of(c) for c in posting}, {port_of(c) for c in reading}
        split = held(serve, posted | read)
        assert split[reader] == read, split
        assert set().union(*(split[pid] for pid in callback_workers)) == posted, split
        assert sorted(len(split[pid]) for pid in callback_workers) == [2, 2], split

        # The kind is the connection's, told from its first request: a callback worker still
        # answers a read sent on one of its connections, with the change it committed.
        profile = json.loads(exchange(posting[0], "GET", "/users/split0/profile"))
        assert profile["profile"] == {"Tag_Profile_IM_Nick": "nick of split0"}
        for connection in posting + reading:
            connection.close()
        assert server.stop() == 0, server.log()


@pytest.mark.faults
def test_a_killed_read_worker_is_replaced_by_a_read_worker(database_url: str, tmp_path: Path) -> None:
    with running_server(serve_env(database_url), tmp_path, workers=1, read_workers=1) as server:
        serve = psutil.Process(server.process.pid)
        workers = wait_for(lambda: len(found := worker_processes(serve)) == 2 and found, "two workers")
        niceness = {w.pid: w.nice() - serve.nice() for w in workers}
        poster = next(pid for pid, added in niceness.items() if added == CALLBACK_NICENESS)
        reader = next(pid for pid, added in niceness.items() if added == 0)
        # Reads are answered all along: by the callback worker until the replacement is ready.
        replacement = psutil.Process(kill_and_wait_for_replacement(server, serve, reader, poster))
        assert replacement.nice() == serve.nice(), "the replacement runs at the read workers' priority"

        # Callbacks still go to the callback worker, reads to the replacement.
        parts = urlsplit(server.url)
        posting = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        body = json.dumps(portrait_body("after-kill")).encode()
        exchange(posting, "POST", f"/callback?{urlencode(portrait_query())}", body)
        reading = [Client(server.url) for _ in range(3)]
        for client in reading:
            client.get()
        posted, read = port_of(posting), {c.port for c in reading}
        assert held(serve, {posted} | read) == {poster: {posted}, replacement.pid: read}
        posting.close()
        for client in reading:
            client.close()
        assert server.stop() == 0, server.log()


@pytest.mark.faults
def test_a_callback_handed_to_a_worker_that_dies_before_taking_it_is_answered_by_another(
    database_url: str, tmp_path: Path
) -> None:
    env = serve_env(database_url, PROFILE_AUDIT_LOG_LEVEL="DEBUG")
    with running_server(env, tmp_path, workers=1, read_workers=1) as server:
        serve = psutil.Process(server.process.pid)
        workers = wait_for(lambda: len(found := worker_processes(serve)) == 2 and found, "two workers")
        poster = next(w.pid for w in workers if w.nice() - serve.nice() == CALLBACK_NICENESS)
        # Stopped, the callback worker still counts as ready: the callback is handed to it and waits
        # in its channel, unread, until the worker is killed.
        os.kill(poster, signal.SIGSTOP)
        parts = urlsplit(server.url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        body = json.dumps(portrait_body("handed-on")).encode()
        connection.request(
            "POST", f"/callback?{urlencode(portrait_query())}", body, {"Content-Type": "application/json"}
        )
        wait_for(lambda: f"handed a connection to worker [{poster}]" in server.log(), "the hand-over")
        os.kill(poster, signal.SIGKILL)

        reply = connection.getresponse()
        assert reply.status == 200, reply.read()
        assert json.loads(reply.read())["ActionStatus"] == "OK"
        assert f"worker [{poster}] did not take a connection; handing it to another" in server.log()
        profile = json.loads(exchange(connection, "GET", "/users/handed-on/profile"))
        assert (profile["profile"], profile["version"]) == ({"Tag_Profile_IM_Nick": "nick of handed-on"}, 1)
        connection.close()
        assert server.stop() == 0, server.log()


@pytest.mark.faults
def test_a_callback_whose_workers_all_die_waits_for_a_replacement(database_url: str, tmp_path: Path) -> None:
    env = serve_env(database_url, PROFILE_AUDIT_LOG_LEVEL="DEBUG")
    with running_server(env, tmp_path, workers=2) as server:
        serve = psutil.Process(server.process.pid)
        workers = wait_for(lambda: len(found := worker_processes(serve)) == 2 and found, "two workers")
        # Stopped, both still count as ready: the callback is handed to one and waits, unread, in its
        # channel. Killed together, neither can take it, and their replacements are not ready yet.
        for worker in workers:
            os.kill(worker.pid, signal.SIGSTOP)
        parts = urlsplit(server.url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        body = json.dumps(portrait_body("held")).encode()
        connection.request(
            "POST", f"/callback?{urlencode(portrait_query())}", body, {"Content-Type": "application/json"}
        )
        wait_for(
            lambda: any(f"handed a connection to worker [{w.pid}]" in server.log() for w in workers),
            "the hand-over",
        )
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)

        reply = connection.getresponse()
        assert reply.status == 200, reply.read()
        assert json.loads(reply.read())["ActionStatus"] == "OK"
        assert "no worker is ready; holding a connection for the next one" in server.log()
        assert not {w.pid for w in workers} & {w.pid for w in worker_processes(serve)}
        profile = json.loads(exchange(connection, "GET", "/users/held/profile"))
        assert (profile["profile"], profile["version"]) == ({"Tag_Profile_IM_Nick": "nick of held"}, 1)
        connection.close()
        assert server.stop() == 0, server.log()
