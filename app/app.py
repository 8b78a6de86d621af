"""The composition root: builds the Litestar application from the settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from app.api.auth import SECURITY_COMPONENTS
from app.api.callback import callback_handler
from app.api.events import EventsController
from app.api.health import healthz, readyz
from app.api.services import Services
from app.api.users import UsersController, encode_user_segment
from app.config import Settings, asyncpg_dsn, get_settings
from app.database import create_engine
from app.eventstore import EventStore
from app.groupcommit import GroupCommitter

log = logging.getLogger(__name__)


class ProfileAudit(Litestar):
    """The Litestar app, with user ids kept whole in `/users/<id>/…` paths."""

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
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Litestar:
    """The service; settings are read from the environment now unless given."""
    settings = settings or get_settings()
    if settings.database_url is None:
        raise RuntimeError("create_app needs a database URL (profile-audit serve starts one)")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(database_url)
        committer = GroupCommitter(asyncpg_dsn(database_url))
        await committer.start()
        app.state["services"] = Services(
            settings=settings, engine=engine, committer=committer, store=EventStore()
        )
        for default in settings.dev_defaults:
            log.warning("development default in use: %s (set it for production)", default)
        try:
            yield
        finally:
            await committer.stop()
            await engine.dispose()

    return ProfileAudit(
        route_handlers=[
            callback_handler(settings.max_body_bytes),
            EventsController,
            UsersController,
            healthz,
            readyz,
        ],
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
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """Factory for ASGI servers (`uvicorn --factory app.app:create_app_from_env`)."""
    return create_app(get_settings())
