"""Django under real servers on loopback: ASGI under uvicorn, WSGI under gunicorn."""

from __future__ import annotations

import http.client

import pytest

from tests.fake_api import FakeApi, Plan
from tests.integrations.test_wsgi_servers import check_isolation, request, serve

pytestmark = pytest.mark.slow

BASE_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.django_settings",
    "ATRACK_PUBLIC_KEY": "pub_test_key_1234",
}
ASYNC_HOOK = "tests.integrations.django.testapp.aidentify"


def test_wsgi_under_gunicorn_isolation(fake_api: FakeApi) -> None:
    env = {**BASE_ENV, "ATRACK_ENDPOINT": fake_api.url}
    with serve("gunicorn", "tests.integrations.django.wsgi:application", env) as port:
        check_isolation(port, fake_api, "/slow")


def test_asgi_under_uvicorn_isolation(fake_api: FakeApi) -> None:
    env = {**BASE_ENV, "ATRACK_ENDPOINT": fake_api.url, "ATRACK_TEST_IDENTIFY": ASYNC_HOOK}
    with serve("uvicorn", "tests.integrations.django.asgi:application", env) as port:
        check_isolation(port, fake_api, "/aslow")


def test_asgi_identify_and_forged_forwarded_for(fake_api: FakeApi) -> None:
    env = {**BASE_ENV, "ATRACK_ENDPOINT": fake_api.url, "ATRACK_TEST_IDENTIFY": ASYNC_HOOK}
    with serve("uvicorn", "tests.integrations.django.asgi:application", env) as port:
        status, _, body = request(
            port, "/aslow?tag=x", headers={"X-Test-User": "user-5", "X-Forwarded-For": "1.2.3.4"}
        )
        assert status == 200, body
        init, event = sorted(fake_api.wait_for(2), key=lambda r: r.path)
    assert (event.body["uuid"], init.body["uuid"]) == ("user-5", "user-5")
    assert event.body["context"]["ipAddress"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("kind", "target", "path"),
    [
        ("gunicorn", "tests.integrations.django.wsgi:application", "/slow?s=0&tag=t"),
        ("uvicorn", "tests.integrations.django.asgi:application", "/aslow?s=0&tag=t"),
    ],
)
def test_api_hanging_does_not_slow_requests(
    fake_api: FakeApi, kind: str, target: str, path: str
) -> None:
    # An API that never answers: each attempt ends at the SDK's 5 s timeout, so a request
    # that waited on it even once would take 5 s. Each request must answer within 4 s
    # (the socket timeout): far from both that and a request's real cost, so a loaded
    # machine does not make it flaky.
    fake_api.default = Plan(hang=True)
    env = {**BASE_ENV, "ATRACK_ENDPOINT": fake_api.url, "ATRACK_TEST_IDENTIFY": ASYNC_HOOK}
    with serve(kind, target, env) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
        for _ in range(20):
            status, _, _ = request(port, path, conn=conn)
            assert status == 200
        conn.close()
        assert fake_api.wait_for(1)  # the SDK did call the API meanwhile


@pytest.mark.parametrize(
    ("kind", "target", "path"),
    [
        ("gunicorn", "tests.integrations.django.wsgi:application", "/current"),
        ("gunicorn", "tests.integrations.django.wsgi:application", "/acurrent"),
        ("uvicorn", "tests.integrations.django.asgi:application", "/acurrent"),
        ("uvicorn", "tests.integrations.django.asgi:application", "/current"),
    ],
)
def test_current_tracker_under_concurrent_requests(
    fake_api: FakeApi, kind: str, target: str, path: str
) -> None:
    import concurrent.futures
    import json
    import uuid as uuid_mod

    env = {**BASE_ENV, "ATRACK_ENDPOINT": fake_api.url}

    def one(i: int) -> None:
        uuid = str(uuid_mod.uuid4())
        status, _, body = request(
            port, f"{path}?s=0.002", headers={"Cookie": f"atrack_uuid={uuid}"}
        )
        assert status == 200, body
        # direct, and across sync_to_async / async_to_sync
        assert set(json.loads(body).values()) == {uuid}

    with (
        serve(kind, target, env) as port,
        concurrent.futures.ThreadPoolExecutor(32) as pool,
    ):
        list(pool.map(one, range(200)))
