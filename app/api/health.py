"""`GET /healthz` and `GET /readyz`."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get

from app.api.services import services
from app.database import current_revision, head_revision


class Health(msgspec.Struct):
    """Liveness."""

    status: str


class Readiness(msgspec.Struct):
    """Readiness, with what is not ready."""

    status: str
    database: str
    schema_revision: str | None
    expected_revision: str | None
    problems: list[str]


@get("/healthz", operation_id="health", tags=["health"], summary="Liveness")
async def healthz() -> Health:
    """The process is up."""
    return Health("ok")


@get(
    "/readyz",
    operation_id="ready",
    tags=["health"],
    summary="Readiness: database reachable, schema at head, projections current",
    responses={},
)
async def readyz(request: Request) -> Response[Readiness]:  # type: ignore[type-arg]
    """200 when the service can take and answer traffic, 503 with the problems otherwise."""
    svc = services(request.app.state)
    expected = head_revision()
    problems: list[str] = []
    revision: str | None = None
    database = "ok"
    try:
        revision = await current_revision(svc.engine)
    except Exception as exc:
        database = f"unreachable: {exc.__class__.__name__}"
        problems.append("database unreachable")
    else:
        if revision != expected:
            problems.append(f"schema at {revision}, expected {expected}: run profile-audit migrate")
        else:
            problems.extend(await svc.projection_problems())
    body = Readiness(
        status="ok" if not problems else "unavailable",
        database=database,
        schema_revision=revision,
        expected_revision=expected,
        problems=problems,
    )
    return Response(body, status_code=200 if not problems else 503)
