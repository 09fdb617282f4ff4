"""The Flask example shop, in-process and under gunicorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("flask")

from atrack_core import ATrackSdk, Options
from atrack_core.testing import CapturedCalls, capture_calls
from example_apps.flask_shop.app import create_app
from tests.fake_api import FakeApi, closed_port_url
from tests.integrations.test_wsgi_servers import (
    atrack_log_guard,  # noqa: F401
    request,
    serve,
    set_cookie_value,
)


@pytest.fixture
def client() -> Iterator[Any]:
    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=closed_port_url()))
    yield create_app({"ATRACK_SDK": sdk, "TESTING": True}).test_client()
    sdk.shutdown(timeout=0.5)


def test_shop_flow(client: Any) -> None:
    with capture_calls() as calls:
        landing = client.get("/?source=newsletter")
        assert landing.status_code == 200
        assert b"new visitor" in landing.data
        assert (
            client.post("/signup", json={"email": "ada@example.com", "plan": "pro"}).json["plan"]
            == "pro"
        )
        assert client.post("/orders", json={"amount": 42.5}).status_code == 201
        assert client.post("/orders", json={"amount": "lots"}).status_code == 400
        assert client.get("/health").json == {"status": "ok"}
        assert b"returning visitor" in client.get("/").data
    uuid = client.get_cookie("atrack_uuid").value
    check_flow(calls, uuid)


def test_input_the_sdk_refuses_is_the_clients_error(client: Any) -> None:
    # A login id with a control character or a lone surrogate (a body's "\\ud800"): the
    # SDK's ValueError becomes a 400 naming the problem, not a 500.
    with capture_calls() as calls:
        for user_id in ("customer\x0042", "customer\ud800"):
            login = client.post("/login", json={"user_id": user_id})
            assert login.status_code == 400
            assert "control characters" in login.json["error"] or "surrogate" in login.json["error"]
        signup = client.post("/signup", json={"email": "ada@example.com", "plan": "\udc80"})
        assert signup.status_code == 400
        assert "lone surrogate" in signup.json["error"]
    # The signup visitor's /init (it goes before the attributes); nothing refused went out.
    assert [c.path for c in calls] == ["/init"]


def check_flow(calls: CapturedCalls, uuid: str) -> None:
    assert [b["uuid"] for b in calls.inits] == [uuid]
    assert calls.inits[0]["context"]["url"] == "/?source=newsletter"
    assert calls.event_names() == ["landing_viewed", "signed_up", "order_created", "landing_viewed"]
    assert calls.events[0]["attributes"] == {"source": "newsletter"}
    assert calls.events[2]["attributes"] == {"amount": 42.5, "currency": "EUR"}
    assert calls.attributes[0]["attributes"] == {"plan": "pro", "email_domain": "example.com"}
    assert {b["uuid"] for b in calls.events} == {uuid}


def test_runs_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATRACK_PUBLIC_KEY", raising=False)
    app = create_app()
    assert app.extensions["atrack"].sdk.options.disabled
    assert app.test_client().get("/").status_code == 200


@pytest.mark.slow
def test_under_gunicorn(fake_api: FakeApi) -> None:
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    with serve("gunicorn", "example_apps.flask_shop.app:app", env) as port:
        status, headers, _ = request(port, "/?source=ads")
        assert status == 200
        uuid = set_cookie_value(headers)
        status, _, _ = request(
            port,
            "/orders",
            method="POST",
            headers={"Cookie": f"atrack_uuid={uuid}", "Content-Type": "application/json"},
            body=b'{"amount": 12}',
        )
        assert status == 201
        received = fake_api.wait_for(3)
    assert sorted(r.path for r in received) == ["/event", "/event", "/init"]
    assert {r.body["uuid"] for r in received} == {uuid}


@pytest.mark.slow
@pytest.mark.redis
def test_order_enqueues_a_receipt_tracked_by_a_celery_worker(
    fake_api: FakeApi, redis_server: Any
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("celery")
    broker = redis_server.url.rsplit("/", 1)[0] + "/12"
    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=fake_api.url))
    client = create_app({"ATRACK_SDK": sdk, "SHOP_CELERY_BROKER": broker}).test_client()
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "SHOP_CELERY_BROKER": broker,
        "ATRACK_PUBLIC_KEY": "pub_test_key_1234",
        "ATRACK_ENDPOINT": fake_api.url,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "example_apps.flask_shop.tasks", "worker",
         "--pool", "solo", "--loglevel", "WARNING", "--without-heartbeat", "--without-mingle",
         "--without-gossip"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        response = client.post("/orders", json={"amount": 9.5}, headers={"User-Agent": "Shop/2"})
        assert response.status_code == 201
        assert sdk.flush(5)
        received = fake_api.wait_for(3, timeout=60)  # /init, order_created, receipt_sent
    finally:
        worker.terminate()
        worker.wait(30)
        if worker.stdout:
            worker.stdout.close()
        sdk.shutdown()
    uuid = client.get_cookie("atrack_uuid").value
    events = {r.body["event"]: r.body for r in received if r.path == "/event"}
    assert set(events) == {"order_created", "receipt_sent"}
    receipt = events["receipt_sent"]
    assert receipt["uuid"] == uuid
    assert receipt["attributes"] == {"amount": 9.5, "currency": "EUR"}
    assert receipt["context"] == events["order_created"]["context"]
    assert receipt["context"]["userAgent"] == "Shop/2"
    assert [r.path for r in received].count("/init") == 1
