from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import AUTH, SDKAPPID

Q = {
    "SdkAppid": str(SDKAPPID),
    "CallbackCommand": "Profile.CallbackPortraitSet",
    "OptPlatform": "iOS",
    "ClientIP": "1.2.3.4",
}


def body(user: str, t: int, **tags: Any) -> dict[str, Any]:
    return {
        "CallbackCommand": "Profile.CallbackPortraitSet",
        "Operator_Account": user,
        "From_Account": user,
        "EventTime": t,
        "ProfileItem": [{"Tag": k, "Value": v} for k, v in tags.items()],
    }


async def test_late_delivery_between(client: AsyncTestClient[Any]) -> None:
    for t, nick in [(1000, "a"), (3000, "c"), (2000, "b")]:
        r = await client.post("/callback", params=Q, json=body("u/1 x", t, Nick=nick, Level=t))
        assert r.status_code == 200
    r = await client.get("/users/u%2F1%20x/profile", params={"sdkappid": SDKAPPID}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["profile"] == {"Nick": "c", "Level": 3000}
    assert r.json()["version"] == 3
    r = await client.get("/users/u%2F1%20x/profile", params={"sdkappid": SDKAPPID, "at": 2500}, headers=AUTH)
    assert r.json()["profile"] == {"Nick": "b", "Level": 2000}
    r = await client.get(
        "/users/u%2F1%20x/profile-history", params={"sdkappid": SDKAPPID, "limit": 2}, headers=AUTH
    )
    page = r.json()
    assert [e["event_time"] for e in page["entries"]] == [3000, 2000]
    assert page["entries"][0]["changes"][1] == {"tag": "Nick", "old": "b", "new": "c"}
    r = await client.get(
        "/users/u%2F1%20x/profile-history",
        params={"sdkappid": SDKAPPID, "cursor": page["next_cursor"]},
        headers=AUTH,
    )
    assert [e["event_time"] for e in r.json()["entries"]] == [1000]
    assert r.json()["next_cursor"] is None
