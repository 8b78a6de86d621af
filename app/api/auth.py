"""Bearer-token guard for the read API."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme

from app.api.services import services

BEARER = "BearerToken"
SECURITY_COMPONENTS = Components(
    security_schemes={
        BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            description="One of the tokens in PROFILE_AUDIT_API_TOKENS.",
        )
    }
)
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]


async def require_token(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Allow the request only with `Authorization: Bearer <one of the configured tokens>`.

    Async so that Litestar runs it on the event loop, not in a thread per request.
    """
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("a bearer token is required")
    tokens = services(connection.app.state).settings.api_tokens
    supplied = token.strip().encode()
    if not any(hmac.compare_digest(supplied, t.encode()) for t in tokens):
        raise NotAuthorizedException("the bearer token is not valid")
