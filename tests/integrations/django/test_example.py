"""The Django example shop under runserver, gunicorn (WSGI) and uvicorn (ASGI).

It has its own settings module, so it runs in server subprocesses only.
"""

from __future__ import annotations

import json

import pytest

from tests.fake_api import FakeApi
from tests.integrations.test_wsgi_servers import ROOT, request, serve, set_cookie_value

pytestmark = pytest.mark.slow

SHOP = ROOT / "example_apps" / "django_shop"
SERVERS = [
    ("runserver", str(SHOP / "manage.py"), ()),
    ("gunicorn", "shop.wsgi:application", ("--chdir", str(SHOP))),
    ("uvicorn", "shop.asgi:application", ("--app-dir", str(SHOP))),
]


@pytest.mark.parametrize(("kind", "target", "args"), SERVERS, ids=[s[0] for s in SERVERS])
def test_shop_flow(fake_api: FakeApi, kind: str, target: str, args: tuple[str, ...]) -> None:
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    with serve(kind, target, env, args=args) as port:
        status, headers, body = request(port, "/?source=newsletter")
        assert status == 200
        assert b"new visitor" in body
        uuid = set_cookie_value(headers)
        assert uuid is not None
        cookie = {"Cookie": f"atrack_uuid={uuid}", "Content-Type": "application/json"}

        def post(path: str, payload: object) -> tuple[int, bytes]:
            status, _, body = request(
                port, path, method="POST", headers=cookie, body=json.dumps(payload).encode()
            )
            return status, body

        assert post("/signup", {"email": "ada@example.com", "plan": "pro"})[0] == 200
        assert post("/orders", {"amount": 42.5})[0] == 201
        assert post("/orders", {"amount": "lots"})[0] == 400
        # Input the SDK refuses is the client's error (400 naming it), not a 500, and
        # sends nothing.
        status, body = post("/login", {"user_id": "customer\x0042"})
        assert (status, b"control characters" in body) == (400, True), body
        status, body = post("/signup", {"email": "ada@example.com", "plan": "\ud800"})
        assert (status, b"lone surrogate" in body) == (400, True), body
        assert request(port, "/health")[0] == 200
        received = fake_api.wait_for(5)
    assert sorted(r.path for r in received) == [
        "/attributes",
        "/event",
        "/event",
        "/event",
        "/init",
    ]
    assert {r.body["uuid"] for r in received} == {uuid}
    events = {r.body["event"]: r.body for r in received if r.path == "/event"}
    assert events["landing_viewed"]["attributes"] == {"source": "newsletter"}
    assert events["order_created"]["attributes"] == {"amount": 42.5, "currency": "EUR"}
    assert events["order_created"]["context"]["url"] == "/orders"
