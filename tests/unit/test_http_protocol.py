"""The HTTP protocol sends a response of known length in one write, and streams the rest as before."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.httpprotocol import HttpProtocol


class RecordingTransport(asyncio.Transport):
    """Records each write; the socket calls a protocol makes on a real transport."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(app: Any, transport: RecordingTransport) -> HttpProtocol:
    """The protocol as a uvicorn worker makes it, on a new connection."""
    config = Config(app=app, http=HttpProtocol, lifespan="off", access_log=False)
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol


async def exchange(app: Any, request: bytes, *, more: bytes = b"") -> RecordingTransport:
    """Feed `request` (then `more` once the app asks for the body) and run the app to its end."""
    transport = RecordingTransport()
    protocol = connect(app, transport)
    protocol.data_received(request)
    if more:
        protocol.data_received(more)
    await finished(protocol)
    protocol.connection_lost(None)
    return transport


async def finished(protocol: HttpProtocol) -> None:
    """Wait for the app's tasks on this protocol to end."""
    await asyncio.gather(*protocol.tasks)


async def sized(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_response_of_known_length_is_one_write() -> None:
    transport = await exchange(sized, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.writes) == 1, transport.writes
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"content-length: 2\r\n\r\nok")


async def test_a_streamed_response_sends_its_head_at_once() -> None:
    head_sent_before_body: list[bool] = []
    transport_box: list[RecordingTransport] = []

    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        head_sent_before_body.append(any(w.startswith(b"HTTP/1.1 200") for w in transport_box[0].writes))
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    transport = RecordingTransport()
    transport_box.append(transport)
    protocol = connect(streamed, transport)
    protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await finished(protocol)
    assert head_sent_before_body == [True]
    assert b"transfer-encoding: chunked" in transport.writes[0]


async def test_100_continue_is_not_held_back() -> None:
    seen: list[bytes] = []

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        await sized(scope, receive, send)

    transport = await exchange(
        echo,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        more=b"abc",
    )
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert seen == [b"abc"]
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b"ok")


async def test_an_app_failing_after_the_head_still_sends_it_before_closing() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("boom")

    transport = RecordingTransport()
    protocol = connect(failing, transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await finished(protocol)
    assert transport.closed
    assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_finished_request_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle per request: the collector would pause the worker to free each one."""
    gc.disable()
    try:
        transport = RecordingTransport()
        protocol = connect(sized, transport)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert protocol.cycle is not None
        cycle = weakref.ref(protocol.cycle)
        await finished(protocol)
        protocol.connection_lost(None)
        del protocol
        assert cycle() is None
        assert len(transport.writes) == 1
    finally:
        gc.enable()
