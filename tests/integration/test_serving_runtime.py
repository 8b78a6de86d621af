"""How a serving process runs the app: request ids on every reply, the garbage collector settled."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.app import GC_YOUNG_THRESHOLD, create_app
from app.logs import configure_logging
from tests.conftest import make_settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def test_a_serving_process_settles_its_heap_once_started(database_url: str, restored_gc: None) -> None:
    gc.unfreeze()
    async with AsyncTestClient(app=create_app(make_settings(database_url), settle=True)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert gc.get_freeze_count() > 0, "start-up objects are kept out of collections"
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


async def test_an_app_made_for_a_test_leaves_the_collector_alone(
    database_url: str, restored_gc: None
) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    async with AsyncTestClient(app=create_app(make_settings(database_url))) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


async def test_replies_made_by_the_app_itself_carry_a_request_id_too(client: AsyncTestClient[Any]) -> None:
    missing = await client.get("/no/such/route")
    assert missing.status_code == 404
    assert len(missing.headers["x-request-id"]) > 8
    echoed = await client.get("/no/such/route", headers={"X-Request-ID": "trace-404"})
    assert echoed.headers["x-request-id"] == "trace-404"


async def test_a_log_line_outside_a_request_has_no_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    logging.getLogger("app.test").warning("outside any request")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["event"] == "outside any request" and "request_id" not in lines[-1]
    logging.getLogger().handlers.clear()
