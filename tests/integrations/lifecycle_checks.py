"""The lifecycle's guarantees, checked over HTTP against any app built like those in
``framework_apps`` (``GET /who?tag=``, ``GET /health``) and served on ``url``, with its
SDK delivering to ``fake_api``. One call per framework keeps each test short."""

from __future__ import annotations

import concurrent.futures
import uuid as uuid_mod

import httpx

from tests.fake_api import FakeApi

COOKIE = "atrack_uuid"
UA = "Checks/1"


def check_lifecycle(
    url: str, fake_api: FakeApi, *, concurrent_users: int = 100, prefix: str = ""
) -> None:
    """One /init per user session, the cookie, exclusions, the request context on the
    events, and current_tracker(): each of ``concurrent_users`` simultaneous users sees
    their own tracker. ``prefix``: where the app mounts ``/who``."""
    who = f"{prefix}/who"
    with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=30) as client:
        first = client.get(f"{who}?tag=s0")
        assert first.status_code == 200, first.text
        uuid = first.json()["uuid"]
        assert first.json() == {"uuid": uuid, "who": uuid}
        assert first.cookies.get(COOKIE) == uuid
        assert "HttpOnly" in first.headers["set-cookie"]
        for i in (1, 2):
            again = client.get(f"{who}?tag=s{i}")
            assert again.json() == {"uuid": uuid, "who": uuid}
            assert "set-cookie" not in again.headers  # a returning user: no new cookie
        health = client.get("/health")
        assert health.status_code == 200
        assert "ok" in health.text
        assert "set-cookie" not in health.headers  # excluded: no cookie, no /init

    def one(i: int) -> str:
        user = str(uuid_mod.uuid4())
        response = httpx.get(
            f"{url}{who}?tag=c{i}", headers={"cookie": f"{COOKIE}={user}"}, timeout=30
        )
        assert response.json() == {"uuid": user, "who": user}
        return user

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        users = list(pool.map(one, range(concurrent_users)))

    # 1 + N /init, 3 + N events.
    received = fake_api.wait_for(2 * concurrent_users + 4, timeout=30)
    inits = [r.body for r in received if r.path == "/init"]
    events = [r.body for r in received if r.path == "/event"]
    assert sorted(i["uuid"] for i in inits) == sorted([uuid, *users])
    session = sorted(
        (e["attributes"]["tag"], e["context"]["url"]) for e in events if e["uuid"] == uuid
    )
    assert session == [(f"s{i}", f"{who}?tag=s{i}") for i in range(3)]
    for event in events:
        tag = event["attributes"]["tag"]
        assert event["context"]["url"] == f"{who}?tag={tag}"
        assert event["context"]["ipAddress"] == "127.0.0.1"
        if tag.startswith("c"):
            assert event["uuid"] == users[int(tag[1:])]
    init = next(i for i in inits if i["uuid"] == uuid)
    assert init["context"] == {"url": f"{who}?tag=s0", "ipAddress": "127.0.0.1", "userAgent": UA}
