"""The real endpoint's parsing and validation, shared by the echo and insert-baseline apps."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from app.app import settle_heap
from app.ingest import CallbackError, NewEvent, authenticate, decode_callback

SDKAPPIDS = (1400000000,)
MAX_BODY_BYTES = 64 * 1024
OK_BODY = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
JSON = "application/json"

Handler = Callable[[Request[Any, Any, Any]], Awaitable[Response[bytes]]]
Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def fail(status: int, reason: str) -> Response[bytes]:
    """A FAIL reply with `status`, encoded like the service's."""
    body = msgspec.json.encode({"ActionStatus": "FAIL", "ErrorCode": 1, "ErrorInfo": reason})
    return Response(content=body, status_code=status, media_type=JSON)


def ok() -> Response[bytes]:
    """The OK reply."""
    return Response(content=OK_BODY, status_code=200, media_type=JSON)


async def parse_delivery(request: Request[Any, Any, Any]) -> NewEvent | Response[bytes]:
    """Authenticate and decode a delivery as `POST /callback` does; a FAIL reply when refused."""
    query = {key: value for key, value in request.query_params.items()}
    try:
        sdkappid = authenticate(query, sdkappids=SDKAPPIDS, token=None, now=time.time())
    except CallbackError as exc:
        return fail(exc.status, exc.reason)
    try:
        raw = await request.body()
    except RequestEntityTooLarge:
        return fail(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    client = request.client
    try:
        return decode_callback(
            query,
            raw,
            sdkappid=sdkappid,
            received_at=datetime.now(UTC),
            peer=client.host if client else None,
        )
    except CallbackError as exc:
        return fail(exc.status, exc.reason)


@get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@asynccontextmanager
async def settled(_app: Litestar) -> AsyncIterator[None]:
    """After the other start-up steps: the service's garbage-collector settings (`settle_heap`)."""
    settle_heap()
    yield


def make_app(handler: Handler, lifespan: Sequence[Lifespan] = ()) -> Litestar:
    """A Litestar app with `handler` at `POST /callback` (same body limit as the service)."""
    route = post("/callback", request_max_body_size=MAX_BODY_BYTES)(handler)
    return Litestar(route_handlers=[route, healthz], lifespan=[*lifespan, settled], debug=False)
