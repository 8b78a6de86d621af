"""`GET /events`: every recorded callback in log order."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Request, get
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.params import Parameter

from app.api.auth import REQUIRE_TOKEN, SECURITY
from app.api.services import services
from app.database import pooled_connection
from app.eventstore import StoredEvent

MAX_LIMIT = 1000
MAX_POSITION = 2**63 - 1  # positions are bigint: a larger `after` is a 400, not a driver error


class EventOut(msgspec.Struct):
    """One recorded callback."""

    position: int
    sdkappid: int
    command: str
    user_id: str | None
    user_version: int | None
    event_time: int | None
    received_at: datetime
    metadata: dict[str, str]
    payload: dict[str, object]
    digest: str
    hash: str


class EventPage(msgspec.Struct):
    """A page of the log; pass `next_after` as `after` for the next one."""

    events: list[EventOut]
    next_after: int


def event_out(event: StoredEvent) -> EventOut:
    """The API shape of a stored event (payload and metadata passed through as stored JSON)."""
    return EventOut(
        position=event.position,
        sdkappid=event.sdkappid,
        command=event.command,
        user_id=event.user_id,
        user_version=event.user_version,
        event_time=event.event_time,
        received_at=event.received_at,
        metadata=event.metadata,  # type: ignore[arg-type]  # msgspec.Raw is emitted verbatim
        payload=event.body,  # type: ignore[arg-type]
        digest=event.digest.hex(),
        hash=event.hash.hex(),
    )


class EventsController(Controller):
    """The event log, read in position order."""

    path = "/events"
    tags = ["events"]  # noqa: RUF012 - Litestar's Controller declares these as instance attributes
    middleware = [REQUIRE_TOKEN]  # noqa: RUF012
    security = SECURITY

    @get(
        "/",
        operation_id="listEvents",
        summary="Read the event log in position order",
        raises=[NotAuthorizedException, ValidationException],
    )
    async def list_events(
        self,
        request: Request,  # type: ignore[type-arg]
        after: Annotated[
            int, Parameter(ge=0, le=MAX_POSITION, description="Return events after this position")
        ] = 0,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Page size")] = 100,
    ) -> EventPage:
        """Events with position greater than `after`, oldest first."""
        svc = services(request.app.state)
        async with pooled_connection(svc.pool) as connection:
            events = await svc.store.select_events(connection, after, limit)
        return EventPage(
            events=[event_out(e) for e in events],
            next_after=events[-1].position if events else after,
        )
