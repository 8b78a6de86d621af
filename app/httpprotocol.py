"""uvicorn's httptools protocol, sending each response's head and body in one write.

uvicorn writes the status line and headers when the app starts the response, and the body in a
second write: two system calls, two TCP segments, and a client that wakes up twice per response.
Here each request's cycle writes through a transport that holds the head of a response of known
length until its body follows.
"""

from __future__ import annotations

import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class HeadHoldingTransport:
    """A cycle's transport: the first write after the response starts waits for the next one."""

    __slots__ = ("_cycle", "_held", "_transport")

    def __init__(self, transport: Any, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        # Weak: the cycle holds this transport, and a reference cycle per request would leave
        # every request's objects to the garbage collector (a 10+ ms pause every ~1,100 requests).
        self._cycle = weakref.ref(cycle)
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Hold the head of a response of known length; send it with the body (or what follows)."""
        cycle = self._cycle()
        assert cycle is not None  # the cycle holds this transport: it lives at least as long
        # chunked_encoding is False once the head has a Content-Length: a streamed (chunked)
        # response's head goes out at once, its first chunk may be long in coming.
        if self._held is None and cycle.response_started and cycle.chunked_encoding is False:
            self._held = data
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._transport.write(data)

    def close(self) -> None:
        """Send what is held, then close."""
        if self._held:
            self._transport.write(self._held)
            self._held = b""
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """httptools with one write per response (`uvicorn --http app.httpprotocol:HttpProtocol`)."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            cycle.transport = HeadHoldingTransport(self.transport, cycle)  # type: ignore[assignment]
