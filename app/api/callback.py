"""`POST /callback`: the Tencent IM callback target."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import structlog
from litestar import Request, Response, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from app.api.services import services
from app.groupcommit import StoreUnavailable
from app.ingest import CallbackError, authenticate, decode_callback
from app.metrics import DELIVERIES, REJECTED, REPLY_SECONDS

log = structlog.get_logger(__name__)

REPLY_DEADLINE_SECONDS = 1.5  # Tencent waits 2 s; answer 503 before that rather than hang
OK_BODY = b'{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}'
JSON = "application/json"

DOC_SAMPLE = {
    "CallbackCommand": "Profile.CallbackPortraitSet",
    "Operator_Account": "id1",
    "From_Account": "id1",
    "EventTime": 1656921052497,
    "ProfileItem": [
        {"Tag": "Tag_Profile_IM_Nick", "Value": "nick1"},
        {"Tag": "Tag_Profile_IM_Gender", "Value": "Gender_Type_Male"},
        {"Tag": "Tag_Profile_IM_AllowType", "Value": "AllowType_Type_NeedConfirm"},
        {"Tag": "Tag_Profile_Custom_Data", "Value": "your custom data"},
    ],
}


class CallbackReply(msgspec.Struct):
    """The reply Tencent IM expects."""

    ActionStatus: str
    ErrorCode: int
    ErrorInfo: str


def fail(status: int, reason: str) -> Response[bytes]:
    """A FAIL reply with `status`."""
    body = msgspec.json.encode(CallbackReply("FAIL", 1, reason))
    return Response(content=body, status_code=status, media_type=JSON)


REPLY_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["ActionStatus", "ErrorCode", "ErrorInfo"],
    properties={
        "ActionStatus": Schema(type=OpenAPIType.STRING, enum=["OK", "FAIL"]),
        "ErrorCode": Schema(type=OpenAPIType.INTEGER, enum=[0, 1]),
        "ErrorInfo": Schema(type=OpenAPIType.STRING),
    },
)
REPLIES = {
    "200": "OK: the delivery is committed (or was already, for a repeated delivery)",
    "400": "FAIL: SdkAppid missing or not a number; or an invalid body (kept in rejected_deliveries)",
    "401": "FAIL: Sign/RequestTime missing, wrong or outside ±60 s (a callback token is configured)",
    "403": "FAIL: SdkAppid not configured here",
    "413": "FAIL: body larger than PROFILE_AUDIT_MAX_BODY_BYTES",
    "503": "FAIL: the database is unavailable or did not commit in time; nothing acknowledged",
}
QUERY = {  # name: (description, required, example)
    "SdkAppid": ("The app's SDKAppID; must be one of PROFILE_AUDIT_SDKAPPID", True, "1400000000"),
    "CallbackCommand": (
        "e.g. Profile.CallbackPortraitSet (the body carries it too)",
        False,
        "Profile.CallbackPortraitSet",
    ),
    "contenttype": ("json", False, "json"),
    "ClientIP": ("The client's IP address", False, "127.0.0.1"),
    "OptPlatform": ("RESTAPI, Web, Android, iOS, …", False, "RESTAPI"),
    "Sign": ("SHA-256 hex of token + RequestTime, when a callback token is configured", False, None),
    "RequestTime": ("Unix time in seconds, when a callback token is configured", False, None),
}


@dataclass
class CallbackOperation(Operation):
    """Documents the query string, the raw JSON body (the handler reads both itself so that bad
    deliveries are kept) and every reply, all of them with Tencent's reply body."""

    def __post_init__(self) -> None:
        self.parameters = [
            Parameter(
                name=name,
                param_in="query",
                schema=Schema(type=OpenAPIType.STRING, examples=[example] if example else None),
                description=description,
                required=required,
            )
            for name, (description, required, example) in QUERY.items()
        ]
        self.responses = {
            status: OpenAPIResponse(
                description=description, content={JSON: OpenAPIMediaType(schema=REPLY_SCHEMA)}
            )
            for status, description in REPLIES.items()
        }
        self.request_body = RequestBody(
            required=True,
            description="The JSON body Tencent IM posts; any CallbackCommand is accepted.",
            content={
                JSON: OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT, required=["CallbackCommand"]),
                    examples={"doc-sample": Example(summary="Profile.CallbackPortraitSet", value=DOC_SAMPLE)},
                )
            },
        )


async def receive_callback(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
    """Record one callback delivery; reply OK only after it is committed."""
    started = time.perf_counter()
    query = {key: value for key, value in request.query_params.items()}
    command = query.get("CallbackCommand") or "unknown"
    outcome, response = await _receive(request, query)
    DELIVERIES.labels(command if len(command) <= 64 else "unknown", outcome).inc()
    REPLY_SECONDS.observe(time.perf_counter() - started)
    if outcome not in ("ok", "duplicate"):
        log.warning("callback refused", outcome=outcome, status=response.status_code, command=command)
    return response


async def _receive(
    request: Request,  # type: ignore[type-arg]
    query: dict[str, str],
) -> tuple[str, Response[bytes]]:
    svc = services(request.app.state)
    settings = svc.settings
    try:
        sdkappid = authenticate(
            query,
            sdkappids=settings.sdkappids,
            token=settings.callback_token,
            now=time.time(),
        )
    except CallbackError as exc:
        return "unauthorized", fail(exc.status, exc.reason)
    try:
        raw = await request.body()
    except RequestEntityTooLarge:
        return "too_large", fail(413, f"body is larger than {settings.max_body_bytes} bytes")
    client = request.client
    try:
        event = decode_callback(
            query,
            raw,
            sdkappid=sdkappid,
            received_at=datetime.now(UTC),
            peer=client.host if client else None,
        )
    except CallbackError as exc:
        if exc.keep:
            try:
                # Bounded like the append: a stalled database must not hold the reply past
                # Tencent's timeout; a 503 gets the delivery redelivered, and kept then.
                await asyncio.wait_for(
                    svc.keep_rejected(sdkappid=sdkappid, query=query, body=raw, reason=exc.reason),
                    REPLY_DEADLINE_SECONDS,
                )
            except Exception:
                return "unavailable", fail(503, "database unavailable; the delivery was not kept")
            REJECTED.inc()
        return "rejected", fail(exc.status, exc.reason)
    try:
        appended = await svc.committer.append(event, deadline=REPLY_DEADLINE_SECONDS)
    except StoreUnavailable as exc:
        return "unavailable", fail(503, str(exc))
    return ("duplicate" if appended.duplicate else "ok"), Response(
        content=OK_BODY, status_code=200, media_type=JSON
    )


def callback_handler(max_body_bytes: int) -> HTTPRouteHandler:
    """The route handler, with the body limit from the settings."""
    return post(
        "/callback",
        operation_id="receiveCallback",
        summary="Receive a Tencent IM callback",
        description=(
            "Query string and body exactly as Tencent IM sends them. 200 with the OK reply once"
            " the event is committed (also for a repeated delivery); 4xx/5xx with the FAIL reply."
        ),
        tags=["callback"],
        status_code=200,
        request_max_body_size=max_body_bytes,
        operation_class=CallbackOperation,
        response_description="The OK reply, sent after the commit",
    )(receive_callback)
