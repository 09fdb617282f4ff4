"""The FastAPI and Starlette example shops behave the same and send what the docs say."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from atrack_core.testing import CapturedCalls, capture_calls
from tests.integrations.asgi_helpers import call, cookie_value, record_atrack_logs


@pytest.fixture(params=["fastapi_shop", "starlette_shop"])
def shop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Imported with tracking disabled: nothing may leave the test, calls are captured.
    monkeypatch.delenv("ATRACK_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("ATRACK_DISABLED", "1")
    return importlib.import_module(f"example_apps.{request.param}.app").app


@pytest.fixture
def calls() -> Iterator[CapturedCalls]:
    with record_atrack_logs(), capture_calls() as captured:
        yield captured


def test_visit_signup_order_login(shop: Any, calls: CapturedCalls) -> None:
    landing = call(shop, "GET", "/?source=newsletter")
    assert landing.status_code == 200
    assert "new visitor" in landing.text
    uuid = cookie_value(landing)
    assert uuid is not None
    cookie = f"atrack_uuid={uuid}"
    assert [(c.path, c.body.get("event")) for c in calls] == [
        ("/init", None),
        ("/event", "landing_viewed"),
    ]
    assert calls.events[0]["attributes"] == {"source": "newsletter"}
    assert calls.events[0]["context"]["url"] == "/?source=newsletter"
    assert "returning visitor" in call(shop, "GET", "/", cookie=cookie).text
    calls.clear()

    signup = call(
        shop, "POST", "/signup", cookie=cookie, json={"email": "ada@example.com", "plan": "pro"}
    )
    assert signup.json()["uuid"] == uuid
    assert call(shop, "POST", "/orders", cookie=cookie, json={"amount": 42.5}).status_code == 201
    assert call(shop, "POST", "/orders", cookie=cookie, json={"amount": -1}).status_code == 422
    assert call(shop, "POST", "/signup", cookie=cookie, json={}).status_code == 422
    assert [(c.path, c.body.get("event")) for c in calls] == [
        ("/attributes", None),
        ("/event", "signed_up"),
        ("/event", "order_created"),
    ]
    assert calls.attributes[0]["attributes"] == {"plan": "pro", "email_domain": "example.com"}
    assert calls.events[1]["attributes"] == {"amount": 42.5, "currency": "EUR"}
    assert {c.body["uuid"] for c in calls} == {uuid}

    logged_in = call(shop, "POST", "/login", cookie=cookie, json={"user_id": "customer-42"})
    assert logged_in.json() == {"uuid": "customer-42"}
    assert calls.events[-1]["uuid"] == "customer-42"
    assert calls.inits[-1]["uuid"] == "customer-42"


def test_input_the_sdk_refuses_is_the_clients_error(shop: Any, calls: CapturedCalls) -> None:
    # A login id with a control character, a plan past the 256 KiB body limit: the
    # SDK's ValueError becomes a 422 naming the problem, not a 500.
    login = call(shop, "POST", "/login", json={"user_id": "customer\x0042"})
    assert login.status_code == 422
    assert "control characters" in login.text
    signup = call(shop, "POST", "/signup", json={"email": "ada@example.com", "plan": "x" * 300_000})
    assert signup.status_code == 422
    assert "limit is 262144" in signup.text
    # The signup visitor's /init (it goes before the attributes); nothing refused went out.
    assert [c.path for c in calls] == ["/init"]


def test_health_is_not_tracked(shop: Any, calls: CapturedCalls) -> None:
    response = call(shop, "GET", "/health")
    assert response.json() == {"status": "ok"}
    assert cookie_value(response) is None
    assert calls.calls == []
