"""`GET /events/stream`: the log as Server-Sent Events, live, resumable by `Last-Event-ID`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Request, get
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from app.api.auth import REQUIRE_TOKEN, SECURITY
from app.api.events import event_out
from app.api.services import services
from app.feed import Lagging
from app.metrics import SSE_SUBSCRIBERS


def resume_position(last_event_id: str | None, after: int | None) -> int:
    """Where to resume: the `Last-Event-ID` header wins over `?after=`; 0 from the start."""
    if last_event_id:
        if not last_event_id.isdigit():
            raise ValidationException("Last-Event-ID: not an event position")
        return int(last_event_id)
    return after or 0


@get(
    "/events/stream",
    operation_id="streamEvents",
    summary="Every recorded callback as Server-Sent Events, live",
    description=(
        "Each message has `id: <position>` and the event JSON (as in GET /events) as data."
        " Reconnect with `Last-Event-ID` (or `?after=`) to resume with no gap and no duplicate."
        " A comment line is sent every 15 s of silence (PROFILE_AUDIT_STREAM_KEEPALIVE_SECONDS)."
        " A client that falls more than 1,000 events behind (PROFILE_AUDIT_STREAM_BUFFER) is"
        " disconnected and resumes by id."
    ),
    tags=["events"],
    responses={
        200: ResponseSpec(
            data_container=str,
            media_type="text/event-stream",
            generate_examples=False,
            description="The event stream: `id:`, `event: event` and the event JSON as `data:`",
        )
    },
    middleware=[REQUIRE_TOKEN],
    security=SECURITY,
    raises=[NotAuthorizedException, ValidationException],
)
async def stream_events(
    request: Request,  # type: ignore[type-arg]
    after: Annotated[int | None, Parameter(ge=0, description="Start after this position")] = None,
    last_event_id: Annotated[
        str | None, HeaderParameter(name="Last-Event-ID", description="Resume after this position")
    ] = None,
) -> ServerSentEvent:
    """Replay from the resume position, then follow the log as it grows."""
    svc = services(request.app.state)
    start = resume_position(last_event_id, after)

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        SSE_SUBSCRIBERS.inc()
        try:
            async for event in svc.feed.subscribe(start, svc.settings.stream_keepalive_seconds):
                if event is None:
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                yield ServerSentEventMessage(
                    data=msgspec.json.encode(event_out(event)).decode(),
                    id=str(event.position),
                    event="event",
                )
        except Lagging as exc:
            yield ServerSentEventMessage(comment=f"disconnected: {exc}; resume with Last-Event-ID")
        finally:
            SSE_SUBSCRIBERS.dec()

    return ServerSentEvent(messages(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
