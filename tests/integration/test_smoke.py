from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import AUTH, fixture_deliveries


async def test_fixture_round_trip(client: AsyncTestClient[Any]) -> None:
    for delivery in fixture_deliveries():
        reply = await client.post("/callback", params=delivery["query"], json=delivery["body"])
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
    page = (await client.get("/events", headers=AUTH)).json()
    assert [e["position"] for e in page["events"]] == list(range(1, len(fixture_deliveries()) + 1))
