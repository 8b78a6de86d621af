"""GET /events (bearer token, after/limit paging, parameter checks), /healthz and /readyz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.database import head_revision
from tests.conftest import API_TOKEN, AUTH, is_fail_reply, make_settings, portrait_body, portrait_query


async def fill(client: AsyncTestClient[Any], count: int) -> None:
    for i in range(count):
        reply = await client.post(
            "/callback", params=portrait_query(), json=portrait_body(f"user{i}", 1000 + i)
        )
        assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong"),
        pytest.param({"Authorization": f"Bearer {API_TOKEN}x"}, id="longer"),
        pytest.param({"Authorization": f"Bearer {API_TOKEN[:-1]}"}, id="prefix"),
        pytest.param({"Authorization": "Bearer "}, id="empty"),
        pytest.param({"Authorization": f"Basic {API_TOKEN}"}, id="basic-scheme"),
        pytest.param({"Authorization": API_TOKEN}, id="no-scheme"),
        pytest.param({"X-Api-Token": API_TOKEN}, id="other-header"),
    ],
)
async def test_events_need_a_valid_bearer_token(
    client: AsyncTestClient[Any], headers: dict[str, str]
) -> None:
    await fill(client, 1)
    reply = await client.get("/events", headers=headers)
    assert reply.status_code == 401, reply.text
    assert "payload" not in reply.text


async def test_bearer_scheme_is_case_insensitive(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/events", headers={"Authorization": f"bearer {API_TOKEN}"})
    assert reply.status_code == 200


async def test_empty_log(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/events", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json() == {"events": [], "next_after": 0}


async def test_event_shape(client: AsyncTestClient[Any]) -> None:
    body = portrait_body("shape", 1234, Tag_Profile_IM_Level=3)
    await client.post("/callback", params=portrait_query(OptPlatform="Web"), json=body)
    event = (await client.get("/events", headers=AUTH)).json()["events"][0]
    assert set(event) >= {
        "position",
        "sdkappid",
        "command",
        "user_id",
        "event_time",
        "received_at",
        "metadata",
        "payload",
        "digest",
        "hash",
    }
    assert event["position"] == 1
    assert event["command"] == "Profile.CallbackPortraitSet"
    assert event["user_id"] == "shape"
    assert event["event_time"] == 1234
    assert event["payload"] == body
    assert event["metadata"]["OptPlatform"] == "Web"
    assert len(bytes.fromhex(event["digest"])) == 32
    assert len(bytes.fromhex(event["hash"])) == 32


async def test_paging_with_after_and_limit(client: AsyncTestClient[Any]) -> None:
    await fill(client, 12)
    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        reply = await client.get("/events", params={"after": after, "limit": 5}, headers=AUTH)
        assert reply.status_code == 200
        page = reply.json()
        positions = [e["position"] for e in page["events"]]
        assert len(positions) <= 5
        if not positions:
            assert page["next_after"] == after
            break
        assert page["next_after"] == positions[-1]
        seen.extend(positions)
        after = page["next_after"]
        pages += 1
    assert seen == list(range(1, 13))
    assert pages == 3

    middle = (await client.get("/events", params={"after": 7, "limit": 2}, headers=AUTH)).json()
    assert [e["position"] for e in middle["events"]] == [8, 9]
    assert [e["payload"]["From_Account"] for e in middle["events"]] == ["user7", "user8"]
    beyond = (await client.get("/events", params={"after": 12}, headers=AUTH)).json()
    assert beyond == {"events": [], "next_after": 12}
    default = (await client.get("/events", headers=AUTH)).json()
    assert [e["position"] for e in default["events"]] == list(range(1, 13))
    largest = await client.get("/events", params={"limit": 1000}, headers=AUTH)
    assert largest.status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"after": "-1"},
        {"after": "abc"},
        {"after": "1.5"},
        {"after": str(2**63)},
        {"after": "9" * 40},
        {"limit": "0"},
        {"limit": "-5"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": str(2**64)},
    ],
    ids=lambda p: "&".join(f"{k}={v[:12]}" for k, v in p.items()),
)
async def test_bad_paging_parameters_are_400(client: AsyncTestClient[Any], params: dict[str, str]) -> None:
    reply = await client.get("/events", params=params, headers=AUTH)
    assert reply.status_code == 400, reply.text


async def test_largest_position_is_a_valid_after(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/events", params={"after": str(2**63 - 1)}, headers=AUTH)
    assert reply.status_code == 200
    assert reply.json()["events"] == []


async def test_healthz(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


async def test_readyz_when_ready(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/readyz")
    assert reply.status_code == 200, reply.text
    ready = reply.json()
    assert ready["status"] == "ok"
    assert ready["database"] == "ok"
    assert ready["schema_revision"] == ready["expected_revision"] == head_revision()
    assert ready["problems"] == []


async def test_readyz_on_a_database_without_schema(empty_database_url: str) -> None:
    async with AsyncTestClient(app=create_app(make_settings(empty_database_url))) as client:
        reply = await client.get("/readyz")
        assert reply.status_code == 503
        assert reply.json()["schema_revision"] is None
        assert reply.json()["problems"]
        assert (await client.get("/healthz")).status_code == 200


async def test_openapi_document(client: AsyncTestClient[Any]) -> None:
    reply = await client.get("/schema/openapi.json")
    assert reply.status_code == 200
    paths = json.loads(reply.text)["paths"]
    assert "/callback" in paths and "/events" in paths


async def test_unconfigured_sdkappid_gets_a_json_fail_reply(client: AsyncTestClient[Any]) -> None:
    reply = await client.post("/callback", params={"SdkAppid": "1"}, content=b"{}")
    assert reply.status_code == 403
    assert is_fail_reply(reply.json())
