"""The JSON read API, the page's static files, and key masking everywhere."""

from __future__ import annotations

import re

import httpx
import pytest

from atrack_core.collector import Collector, key_id, mask_key

from .conftest import KEY, OTHER_KEY, body, post


@pytest.fixture
def populated(client: httpx.Client, collector: Collector) -> Collector:
    post(client, "/init", body("/init", uuid="alice", attributes={"plan": "pro"}))
    post(client, "/init", body("/init", uuid="bob"))
    post(client, "/init", body("/init", uuid="carol"), key=OTHER_KEY)
    post(client, "/event", body("/event", uuid="alice", event="signup"))
    post(client, "/event", body("/event", uuid="alice", event="order_created"))
    post(client, "/event", body("/event", uuid="bob", event="order_created"))
    post(client, "/event", body("/event", uuid="carol", event="signup"), key=OTHER_KEY)
    post(client, "/event", body("/event", uuid="alice", event=""))  # rejected
    return collector


def names(rows: list[dict[str, object]], field: str) -> list[object]:
    return [row[field] for row in rows]


@pytest.mark.usefixtures("populated")
def test_users_filters(client: httpx.Client) -> None:
    everyone = client.get("/api/users").json()["users"]
    assert sorted(names(everyone, "uuid")) == ["alice", "bob", "carol"]
    by_key = client.get("/api/users", params={"key": key_id(OTHER_KEY)}).json()["users"]
    assert names(by_key, "uuid") == ["carol"]
    by_raw_key = client.get("/api/users", params={"key": KEY}).json()["users"]
    assert sorted(names(by_raw_key, "uuid")) == ["alice", "bob"]
    [alice] = client.get("/api/users", params={"uuid": "alice"}).json()["users"]
    assert alice["attributes"] == {"plan": "pro"}
    assert alice["event_count"] == 2
    assert client.get("/api/users", params={"uuid": "nobody"}).json()["users"] == []


@pytest.mark.usefixtures("populated")
def test_events_filters_and_order(client: httpx.Client) -> None:
    events = client.get("/api/events").json()["events"]
    assert names(events, "event") == ["signup", "order_created", "order_created", "signup"]
    assert names(events, "uuid") == ["carol", "bob", "alice", "alice"]
    orders = client.get("/api/events", params={"event": "order_created"}).json()["events"]
    assert names(orders, "uuid") == ["bob", "alice"]
    mine = client.get("/api/events", params={"key": key_id(KEY), "event": "signup"}).json()
    assert names(mine["events"], "uuid") == ["alice"]
    alice = client.get("/api/events", params={"uuid": "alice"}).json()["events"]
    assert names(alice, "event") == ["order_created", "signup"]
    limited = client.get("/api/events", params={"limit": 2}).json()["events"]
    assert names(limited, "uuid") == ["carol", "bob"]
    after = client.get("/api/events", params={"after_id": events[1]["id"]}).json()["events"]
    assert names(after, "uuid") == ["carol"]


@pytest.mark.usefixtures("populated")
def test_calls_filters_and_order(client: httpx.Client) -> None:
    calls = client.get("/api/calls").json()["calls"]
    assert len(calls) == 8
    assert names(calls, "id") == sorted(names(calls, "id"))
    assert calls[-1]["status"] == 400
    assert calls[-1]["error"] == "'event' must not be empty"
    events = client.get("/api/calls", params={"path": "/event"}).json()["calls"]
    assert len(events) == 5
    assert {c["path"] for c in events} == {"/event"}
    alice = client.get("/api/calls", params={"uuid": "alice"}).json()["calls"]
    assert names(alice, "path") == ["/init", "/event", "/event"]
    last_two = client.get("/api/calls", params={"limit": 2}).json()["calls"]
    assert names(last_two, "id") == names(calls, "id")[-2:]
    other = client.get("/api/calls", params={"key": OTHER_KEY}).json()["calls"]
    assert names(other, "uuid") == ["carol", "carol"]


@pytest.mark.usefixtures("populated")
def test_stats(client: httpx.Client) -> None:
    stats = client.get("/api/stats").json()
    assert stats["users"] == 3
    assert stats["events"] == 4
    assert stats["calls"] == 8
    assert stats["rejected_calls"] == 1
    assert stats["duplicate_calls"] == 0
    assert stats["event_names"] == ["order_created", "signup"]
    assert sorted(stats["keys"], key=lambda k: k["key_id"]) == sorted(
        [
            {"key_id": key_id(KEY), "key": mask_key(KEY)},
            {"key_id": key_id(OTHER_KEY), "key": mask_key(OTHER_KEY)},
        ],
        key=lambda k: k["key_id"],
    )


def test_version_changes_on_every_write(client: httpx.Client) -> None:
    first = client.get("/api/stats").json()["version"]
    assert client.get("/api/stats").json()["version"] == first
    post(client, "/event", body("/event"))
    second = client.get("/api/stats").json()["version"]
    assert second != first
    post(client, "/event", body("/event"), key=None)  # a rejected call changes it too
    assert client.get("/api/stats").json()["version"] != second


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("/api/events?limit=0", "'limit'"),
        ("/api/events?limit=-1", "'limit'"),
        ("/api/events?limit=abc", "'limit'"),
        ("/api/events?limit=10001", "'limit'"),
        ("/api/users?limit=x", "'limit'"),
        ("/api/calls?limit=1.5", "'limit'"),
        ("/api/events?after_id=x", "'after_id'"),
        ("/api/events?after_id=%C2%B2", "'after_id'"),
        ("/api/events?limit=%C2%B2", "'limit'"),
        ("/api/events?limit=%EF%BC%91", "'limit'"),
    ],
)
def test_bad_query_parameters_are_400(client: httpx.Client, url: str, fragment: str) -> None:
    response = client.get(url)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.usefixtures("populated")
def test_no_full_key_leaves_the_collector(client: httpx.Client) -> None:
    responses = [
        client.get(url)
        for url in (
            "/",
            "/static/app.js",
            "/api/users",
            "/api/events",
            "/api/calls",
            "/api/stats",
            f"/api/users?key={KEY}",
        )
    ]
    for response in responses:
        assert response.status_code == 200
        for key in (KEY, OTHER_KEY):
            assert key not in response.text
            assert key[4:] not in response.text  # not even without its prefix


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("pub_test_0123456789abcd", "pub_…abcd"),
        ("pub_0123456789", "pub_…6789"),
        ("sk_live_51Habcdefgh", "sk_…efgh"),
        ("0123456789abcdef", "…cdef"),
        ("pub_short", "pub_…"),  # too short to show any of it
        ("abc", "…"),
        ("", "…"),
    ],
)
def test_mask_key(key: str, masked: str) -> None:
    assert mask_key(key) == masked


def test_key_id_is_stable_hex() -> None:
    assert key_id(KEY) == key_id(KEY)
    assert key_id(KEY) != key_id(OTHER_KEY)
    assert re.fullmatch(r"[0-9a-f]{12}", key_id(KEY))


def test_inspector_page_and_assets(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="static/app.js"' in page.text
    # No build step and nothing fetched from elsewhere.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media)
        assert "http://" not in asset.text
        assert "https://" not in asset.text
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/index.html").status_code == 404
