"""The supervisor holds a handed-over connection until its worker reports it taken, and a
connection no worker is ready for until one is.

Workers here are the parent's side of real socket pairs, without processes: the test plays each
worker's end of the channel, and a real TCP connection carries the request.
"""

from __future__ import annotations

import collections
import selectors
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from uvicorn import Config

from app.workers import HOLD_WAIT, READY, TAKEN, Supervisor, Worker

REQUEST = b"POST /callback?SdkAppid=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def channel_worker(supervisor: Supervisor, pid: int, *, ready: bool = True) -> tuple[Worker, socket.socket]:
    """A Worker without a process (not ready: a replacement starting), registered with `supervisor`;
    and the worker's end of its channel."""
    worker = object.__new__(Worker)
    worker.kind = None
    worker.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.channel.setblocking(False)
    worker.process = SimpleNamespace(pid=pid)  # type: ignore[assignment]
    worker.ready = worker.started = ready
    worker.open = 0
    worker.unclaimed = collections.deque()
    supervisor.workers.append(worker)
    supervisor.selector.register(worker.channel, selectors.EVENT_READ)
    return worker, child_end


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection whose client has sent REQUEST: (client end, accepted end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    client.sendall(REQUEST)
    yield client, accepted
    client.close()
    accepted.close()


def test_a_connection_a_worker_leaves_untaken_goes_to_another_with_its_request_unread(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = connection
    supervisor = Supervisor(Config("app.app:create_app"), 2)
    first, first_end = channel_worker(supervisor, 101)
    second, second_end = channel_worker(supervisor, 102)
    supervisor.last = 1
    supervisor._hand_over(accepted, None)
    assert (len(first.unclaimed), first.open, second.open) == (1, 1, 0)

    # The first worker shuts down without reading its channel: the connection handed to it is lost
    # with its end of the channel unless the parent hands it on.
    first_end.close()
    supervisor._report(first)
    assert (first.ready, len(first.unclaimed), first.open) == (False, 0, 0)
    _, fds, _, _ = socket.recv_fds(second_end, 64, 16)
    assert len(fds) == 1 and second.open == 1
    with socket.socket(fileno=fds[0]) as taken:
        assert taken.recv(len(REQUEST)) == REQUEST
        taken.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 200 OK")

        # Taken: the parent lets go of its descriptor, so the worker's close ends the connection.
        second_end.send(TAKEN)
        supervisor._report(second)
        assert not second.unclaimed and accepted.fileno() == -1
    assert client.recv(100) == b""
    second_end.close()
    supervisor.selector.close()


def test_a_connection_no_worker_is_ready_for_waits_for_the_next_ready_one(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = connection
    supervisor = Supervisor(Config("app.app:create_app"), 1)
    restarting, restarting_end = channel_worker(supervisor, 201, ready=False)
    supervisor.listener = socket.create_server(("127.0.0.1", 0))  # accepting resumes once it is ready
    supervisor._hand_over(accepted, None)
    assert accepted.fileno() != -1 and len(supervisor.held) == 1 and restarting.open == 0

    # Ready: the held connection goes to it, request unread, and the parent holds it no more.
    restarting_end.send(READY)
    supervisor._report(restarting)
    assert not supervisor.held and (len(restarting.unclaimed), restarting.open) == (1, 1)
    _, fds, _, _ = socket.recv_fds(restarting_end, 64, 16)
    assert len(fds) == 1
    with socket.socket(fileno=fds[0]) as taken:
        assert taken.recv(len(REQUEST)) == REQUEST
        taken.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.recv(100).startswith(b"HTTP/1.1 200 OK")
    assert supervisor.listening
    restarting_end.close()
    supervisor.selector.close()
    supervisor.listener.close()
    accepted.close()


def test_a_held_connection_is_closed_when_no_worker_becomes_ready_in_time(
    connection: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, accepted = connection
    supervisor = Supervisor(Config("app.app:create_app"), 1)
    _restarting, restarting_end = channel_worker(supervisor, 301, ready=False)
    now = 1000.0
    monkeypatch.setattr(time, "monotonic", lambda: now)
    supervisor._hand_over(accepted, None)
    supervisor._drop_held()
    assert len(supervisor.held) == 1 and accepted.fileno() != -1

    now += HOLD_WAIT
    supervisor._drop_held()
    assert not supervisor.held and accepted.fileno() == -1
    with pytest.raises(ConnectionResetError):  # closed with its request unread
        client.recv(100)
    restarting_end.close()
    supervisor.selector.close()
