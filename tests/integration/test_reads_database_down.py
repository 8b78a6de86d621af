"""Reads answer 503, never a bare 500, when the database cannot be reached."""

from __future__ import annotations

import tempfile
from typing import Any

from litestar.testing import AsyncTestClient

from app.app import create_app
from tests.conftest import AUTH, SDKAPPID, make_settings


async def test_read_endpoints_answer_503_without_a_database() -> None:
    nowhere = f"postgresql://postgres@/nothing?host={tempfile.mkdtemp()}"  # no server listens there
    app = create_app(make_settings(nowhere, sdkappids=(SDKAPPID,)))
    async with AsyncTestClient(app=app) as client:
        for path in ("/users/alice/profile", "/users/alice/profile-history", "/events"):
            reply = await client.get(path, headers=AUTH)
            assert reply.status_code == 503, (path, reply.status_code, reply.text)
            body: dict[str, Any] = reply.json()
            assert "database unavailable" in body["detail"]
