"""Schemathesis over every operation of `/schema/openapi.json`, against a live `profile-audit serve`.

Requests generated from the document (valid and invalid parameters, bodies, headers), with the
bearer token, must never get a 5xx, and every answer must match what the document says: its status
code is documented, its content type, headers and body conform (two checks that do not apply are
left out, see NOT_APPLICABLE).

`GET /events/stream` never ends by design (Server-Sent Events): it is called streaming; a 200 must
open an event stream, anything else is validated as usual.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.app import create_app
from tests.conftest import (
    API_TOKEN,
    OK_REPLY,
    SDKAPPID,
    LiveServer,
    _admin,
    make_settings,
    portrait_body,
    portrait_query,
    running_server,
    serve_env,
    with_database,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.e2e]

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# positive_data_acceptance: the document cannot say which SDKAppIDs are configured, so a
# schema-valid `?sdkappid=` of another app is rightly a 400. negative_data_rejection: unknown query
# parameters are ignored, as HTTP APIs do, and the token is always sent, so a "negative" case made
# only of an extra parameter or of a dropped Authorization header is rightly answered 200.
NOT_APPLICABLE = [positive_data_acceptance, negative_data_rejection]


@pytest.fixture(scope="module")
def seeded_server(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`serve` on a fresh database holding a few users' changes and another command."""
    name = f"pa_fuzz_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
    env = serve_env(with_database(server_url, name))
    try:
        with running_server(env, tmp_path_factory.mktemp("schemathesis")) as server:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for i, user in enumerate(["0", "id1", "user 2", "üñí/ç"]):
                    for j in range(3):
                        body = portrait_body(user, 1_700_000_000_000 + i * 10 + j, Tag_Profile_IM_Level=j)
                        reply = http.post("/callback", params=portrait_query(), json=body)
                        assert reply.json() == OK_REPLY, reply.text
                other = {"CallbackCommand": "State.StateChange", "Info": {"To_Account": "id1"}}
                reply = http.post(
                    "/callback", params=portrait_query(CallbackCommand="State.StateChange"), json=other
                )
                assert reply.json() == OK_REPLY, reply.text
            yield server
    finally:
        asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def openapi_document() -> dict[str, Any]:
    """The document the service serves at /schema/openapi.json, built from the app (no database
    is touched before the lifespan runs). The last test checks the live server serves the same."""
    app = create_app(make_settings("postgresql://unused@127.0.0.1:1/unused", sdkappids=(SDKAPPID,)))
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return json.loads(json.dumps(document))


schema = schemathesis.openapi.from_dict(openapi_document())


def check_stream(case: Any, base_url: str) -> None:
    """The endpoint that never ends, called streaming: a 200 must open an event stream (its
    headers are checked), any other answer ends and is validated like the others."""
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=AUTH)
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            kwargs["method"],
            kwargs["url"],
            params=kwargs.get("params"),
            headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
            cookies=kwargs.get("cookies"),
        ) as response,
    ):
        assert response.status_code < 500, f"{response.status_code} for {case.as_curl_command()}"
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
            return
        response.read()
    case.validate_response(response, excluded_checks=NOT_APPLICABLE, headers=AUTH, transport_kwargs=kwargs)


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_conforms_and_never_fails_with_5xx(seeded_server: LiveServer, case: Any) -> None:
    if case.path == "/events/stream":
        check_stream(case, seeded_server.url)
        return
    response = case.call_and_validate(
        base_url=seeded_server.url, headers=AUTH, excluded_checks=NOT_APPLICABLE, timeout=30
    )
    assert response.status_code < 500, response.text


def test_the_fuzzed_document_is_the_served_one(seeded_server: LiveServer) -> None:
    """What was fuzzed above is what /schema/openapi.json serves, and it names every route."""
    with httpx.Client(base_url=seeded_server.url, timeout=30) as http:
        document = http.get("/schema/openapi.json").json()
    assert document == openapi_document()
    assert set(document["paths"]) >= {
        "/callback",
        "/events",
        "/events/stream",
        "/users/{user_id}/profile",
        "/users/{user_id}/profile-history",
        "/healthz",
        "/readyz",
        "/metrics",
    }
