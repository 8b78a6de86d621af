"""The composition root: builds the Litestar application from the settings."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
from litestar import Litestar, Request, Response
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from app.api.auth import SECURITY_COMPONENTS
from app.api.callback import callback_handler
from app.api.events import EventsController
from app.api.health import healthz, metrics, readyz
from app.api.services import Services
from app.api.stream import stream_events
from app.api.users import UsersController, encode_user_segment
from app.config import Settings, asyncpg_dsn, get_settings, require_sdkappids
from app.database import close_pool, create_pool, pooled_connection, warm_pool
from app.eventstore import EventStore
from app.feed import Feed, store_reader
from app.groupcommit import GroupCommitter
from app.logs import configure_logging, request_id_middleware
from app.metrics import observe_batch
from app.queries import warm_reads

log = logging.getLogger(__name__)
# Read connections each process opens and prepares when it starts, in the background: a request
# that opens one pays the connection set-up and the first preparation of its statement (~8 ms).
WARM_CONNECTIONS = 4

# Young-generation collections run after this many net allocations of tracked objects (CPython's
# default is 700). Group commit keeps every pending delivery's objects alive until its batch
# commits, so at the default the collector ran every few requests, re-scanning those live objects
# each time; the objects are freed by reference counting anyway (the hot path makes no cycles).
GC_YOUNG_THRESHOLD = 20_000


class ProfileAudit(Litestar):
    """The Litestar app, with user ids kept whole in `/users/<id>/…` paths and a request id on
    every HTTP reply (outermost, so replies made by the app itself, such as 404s, carry one too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._serve_http = request_id_middleware(super().__call__)

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == ScopeType.HTTP:
            http_scope = cast("Scope", scope)
            if http_scope["path"].startswith("/users/"):
                encode_user_segment(http_scope)
            await self._serve_http(http_scope, cast("Receive", receive), cast("Send", send))
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, settle: bool = False) -> Litestar:
    """The service; settings are read from the environment now unless given.

    `settle`: once started, tune the process's garbage collector for serving (`settle_heap`); for
    a process that runs this app and nothing else, as `profile-audit serve`'s workers do.
    """
    settings = settings or get_settings()
    require_sdkappids(settings)
    if settings.database_url is None:
        raise RuntimeError("create_app needs a database URL (profile-audit serve starts one)")
    database_url = settings.database_url

    configure_logging(settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        dsn = asyncpg_dsn(database_url)
        pool = await create_pool(database_url)
        store = EventStore()
        committer = GroupCommitter(dsn, store=store, on_batch=observe_batch)
        feed = Feed(
            dsn,
            store_reader(store, lambda: pooled_connection(pool)),
            capacity=settings.stream_buffer,
        )
        await committer.start()
        await feed.start(head=await _head_position(pool, store))
        warming = asyncio.ensure_future(warm_pool(pool, WARM_CONNECTIONS, warm_reads))
        app.state["services"] = Services(
            settings=settings, pool=pool, committer=committer, store=store, feed=feed
        )
        for default in settings.dev_defaults:
            log.warning("development default in use: %s (set it for production)", default)
        if settle:
            settle_heap()
        try:
            yield
        finally:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
            await feed.stop()
            await committer.stop()
            await close_pool(pool)

    return ProfileAudit(
        route_handlers=[
            callback_handler(settings.max_body_bytes),
            EventsController,
            UsersController,
            stream_events,
            healthz,
            readyz,
            metrics,
        ],
        exception_handlers={
            OSError: database_unavailable,
            asyncpg.PostgresError: database_unavailable,
            asyncpg.InterfaceError: database_unavailable,
            # A connection the server closed while it was being borrowed.
            asyncpg.InternalClientError: database_unavailable,
        },
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="profile-audit",
            version="0.1.0",
            description=(
                "Event-sourced audit log for Tencent Cloud IM profile changes. The read API takes"
                " `Authorization: Bearer <token>`."
            ),
            components=SECURITY_COMPONENTS,
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,
        debug=False,
    )


def settle_heap() -> None:
    """Once started: keep the collector off the start-up heap and let it run less often.

    Everything allocated so far (modules, the app, the pools) lives as long as the process; frozen,
    full collections no longer traverse it (garbage among it would never be collected: call this in
    a process that serves one app, not in one that makes many). The benchmark's echo and insert
    apps call it too, so that they run on the same runtime settings.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    """503 (never a bare 500) when a read cannot reach the database."""
    log.warning("database unavailable: %s: %s", exc.__class__.__name__, exc)
    return Response({"status_code": 503, "detail": "database unavailable; retry later"}, status_code=503)


async def _head_position(pool: asyncpg.Pool[Any], store: EventStore) -> int:
    try:
        async with pooled_connection(pool) as connection:
            position, _hash = await store.head(connection)
            return position
    except Exception:  # the database may be down at start; the feed catches up from 0 then
        log.warning("could not read the log head at start; the live feed starts from position 0")
        return 0


def create_app_from_env() -> Litestar:
    """Factory for ASGI servers (`uvicorn --factory app.app:create_app_from_env`): one app per process."""
    return create_app(get_settings(), settle=True)
