"""`GET /healthz` and `GET /readyz`."""

from __future__ import annotations

import msgspec
import structlog
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from app.api.services import services
from app.database import head_revision, pooled_connection, select_revision
from app.metrics import EVENTS, PROJECTION_VERSION, exposition
from app.projections import REGISTRY

log = structlog.get_logger(__name__)


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
    responses={
        503: ResponseSpec(
            data_container=Readiness, generate_examples=False, description="Not ready, with the problems"
        )
    },
)
async def readyz(request: Request) -> Response[Readiness]:  # type: ignore[type-arg]
    """200 when the service can take and answer traffic, 503 with the problems otherwise."""
    svc = services(request.app.state)
    expected = head_revision()
    problems: list[str] = []
    revision: str | None = None
    database = "ok"
    try:
        async with pooled_connection(svc.pool) as connection:
            revision = await select_revision(connection)
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


@get(
    "/metrics",
    operation_id="metrics",
    tags=["health"],
    summary="Prometheus metrics (text exposition format)",
    media_type="text/plain; version=0.0.4; charset=utf-8",
)
async def metrics(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
    """Deliveries, reply latency, group commits, lock waits, events, projection versions."""
    svc = services(request.app.state)
    try:
        async with pooled_connection(svc.pool) as connection:
            position, _hash = await svc.store.head(connection)
            built = {
                row["name"]: row["version"]
                for row in await connection.fetch("SELECT name, version FROM projection_versions")
            }
    except Exception:
        log.warning("metrics: database unreachable; database gauges not refreshed")
    else:
        EVENTS.set(position)
        for projection in REGISTRY.values():
            PROJECTION_VERSION.labels(projection.name, "code").set(projection.version)
            PROJECTION_VERSION.labels(projection.name, "table").set(built.get(projection.name, 0))
    body, content_type = exposition()
    return Response(body, media_type=content_type)
