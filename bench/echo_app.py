"""The echo ceiling: the service's HTTP stack and parsing, replying OK without a database."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response

from bench.delivery import make_app, ok, parse_delivery


async def receive(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Parse and validate the delivery like the service, then answer OK."""
    parsed = await parse_delivery(request)
    return parsed if isinstance(parsed, Response) else ok()


def create_app() -> Litestar:
    """Factory for uvicorn (`bench.echo_app:create_app --factory`)."""
    return make_app(receive)
