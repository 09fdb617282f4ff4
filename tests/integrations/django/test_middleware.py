"""The Django middleware through the sync (WSGI) and async (ASGI) test clients."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.test import AsyncClient, Client, override_settings

from atrack_core import ATrackSdk, Options
from atrack_core.testing import CapturedCalls
from atrack_integrations.django import ATrackMiddleware, get_sdk
from atrack_integrations.django.storage import DjangoCacheStorage
from tests.integrations.django import testapp
from tests.integrations.test_wsgi_servers import LogGuard

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
AUTH_ASYNC = {"IDENTIFY": "tests.integrations.django.testapp.aidentify"}


def atrack_settings(**extra: Any) -> dict[str, Any]:
    from django.conf import settings

    return {**settings.ATRACK, **extra}


def aget(client: AsyncClient, path: str, **kwargs: Any) -> Any:
    # Wrapped: on Django 4.2 AsyncClient.get is a plain function returning a coroutine.
    async def get() -> Any:
        return await client.get(path, **kwargs)

    return async_to_sync(get)()


# --------------------------------------------------------------------------- WSGI mode


def test_new_visitor_gets_cookie_and_one_init(calls: CapturedCalls) -> None:
    client = Client(HTTP_USER_AGENT=UA)
    resp = client.get("/track?source=google")
    uuid = resp.json()["uuid"]
    morsel = resp.cookies["atrack_uuid"]
    assert morsel.value == uuid
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert int(morsel["max-age"]) == 365 * 24 * 3600
    assert not morsel["secure"]
    (init,) = calls.inits
    assert (init["uuid"], init["isNewUser"]) == (uuid, True)
    assert init["context"]["url"] == "/track?source=google"
    (event,) = calls.events
    assert event["event"] == "sync_event"
    assert event["context"]["userAgent"] == UA
    assert event["context"]["ipAddress"] == "127.0.0.1"


def test_cookie_round_trip_one_init_per_session(calls: CapturedCalls) -> None:
    client = Client()
    uuid = client.get("/track").json()["uuid"]
    for _ in range(3):
        resp = client.get("/track")
        assert resp.json()["uuid"] == uuid
        assert "atrack_uuid" not in resp.cookies
    assert len(calls.inits) == 1
    assert [e["uuid"] for e in calls.events] == [uuid] * 4


def test_secure_cookie_on_https() -> None:
    resp = Client().get("/track", secure=True)
    assert resp.cookies["atrack_uuid"]["secure"] is True


def test_secure_cookie_follows_secure_proxy_ssl_header() -> None:
    # Behind a TLS-terminating proxy the server sees http; Django's request.scheme
    # (SECURE_PROXY_SSL_HEADER) decides the Secure flag, in both modes.
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        proxied = Client().get("/track", HTTP_X_FORWARDED_PROTO="https")
        plain = Client().get("/track", HTTP_X_FORWARDED_PROTO="http")
        proxied_async = aget(AsyncClient(), "/atrack", headers={"x-forwarded-proto": "https"})
    assert proxied.cookies["atrack_uuid"]["secure"] is True
    assert not plain.cookies["atrack_uuid"]["secure"]
    assert proxied_async.cookies["atrack_uuid"]["secure"] is True


def test_forged_x_forwarded_for_is_ignored(calls: CapturedCalls) -> None:
    Client().get("/track", HTTP_X_FORWARDED_FOR="1.2.3.4", REMOTE_ADDR="203.0.113.9")
    assert calls.events[0]["context"]["ipAddress"] == "203.0.113.9"


def test_trusted_proxy_setting(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(TRUSTED_PROXIES=["10.0.0.0/8"])):
        Client().get("/track", HTTP_X_FORWARDED_FOR="1.2.3.4", REMOTE_ADDR="10.0.0.2")
    assert calls.events[0]["context"]["ipAddress"] == "1.2.3.4"


def test_excluded_path_and_head(calls: CapturedCalls) -> None:
    client = Client()
    assert client.get("/health").cookies == {}
    assert client.head("/whoami").cookies == {}
    assert calls.inits == []


def test_sync_identify_hook_uses_request_user(calls: CapturedCalls) -> None:
    resp = Client().get("/track", HTTP_X_TEST_USER="user-7")
    assert resp.json()["uuid"] == "user-7"
    assert [b["uuid"] for b in calls.inits] == ["user-7"]
    assert testapp.SYNC_USER_LOADS == ["/track"]


def test_login_switches_user_and_sets_cookie(calls: CapturedCalls) -> None:
    client = Client()
    client.get("/track")
    known = "3f1c3a52-8f4b-4c1e-9a55-0c7a9d1b2e11"
    resp = client.get(f"/login?as={known}")
    assert resp.json()["uuid"] == known
    assert resp.cookies["atrack_uuid"].value == known
    assert calls.inits[-1]["uuid"] == known
    assert calls.inits[-1]["attributes"] == {"plan": "pro"}


def test_view_exceptions_propagate_unchanged() -> None:
    with pytest.raises(ValueError, match="boom from the view"):
        Client().get("/boom")


def test_streaming_response(calls: CapturedCalls) -> None:
    resp = Client().get("/stream")
    assert resp.streaming
    assert "atrack_uuid" in resp.cookies
    assert b"".join(resp.streaming_content) == b"chunk0\nchunk1\nchunk2\n"


def test_override_settings_takes_effect(calls: CapturedCalls) -> None:
    first = get_sdk()
    with override_settings(
        ATRACK=atrack_settings(COOKIE_NAME="visitor", PUBLIC_KEY="pub_other_9999")
    ):
        resp = Client().get("/track")
        assert "visitor" in resp.cookies
        assert "atrack_uuid" not in resp.cookies
        assert get_sdk() is not first
    assert get_sdk() is not None
    assert "atrack_uuid" in Client().get("/track").cookies


def test_setting_names_in_any_case(calls: CapturedCalls) -> None:
    lower = {"public_key": "pub_lower_1234", "endpoint": "http://127.0.0.1:9"}
    with override_settings(ATRACK={**lower, "cookie_name": "visitor"}):
        assert "visitor" in Client().get("/track").cookies


def test_get_sdk_is_built_once_per_settings_value() -> None:
    assert get_sdk() is get_sdk()
    assert isinstance(get_sdk(), ATrackSdk)


def test_sdk_setting_is_used_as_given(calls: CapturedCalls) -> None:
    with (
        ATrackSdk(Options("pub_given_4321", disabled=True)) as mine,
        override_settings(ATRACK={"SDK": mine}),
    ):
        assert get_sdk() is mine
        Client().get("/track")
    assert len(calls.events) == 1


def test_storage_dotted_path_dedupes_through_the_cache(calls: CapturedCalls) -> None:
    storage = "atrack_integrations.django.storage.DjangoCacheStorage"
    with override_settings(ATRACK=atrack_settings(STORAGE=storage)):
        assert isinstance(get_sdk().storage, DjangoCacheStorage)
        client = Client()
        client.get("/track")
        client.get("/track")
    assert len(calls.inits) == 1


def test_double_installation_does_the_work_once(calls: CapturedCalls) -> None:
    from django.conf import settings

    middleware = [*settings.MIDDLEWARE, "atrack_integrations.django.middleware.ATrackMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        resp = Client().get("/track")
    assert len(calls.inits) == 1
    assert resp.cookies["atrack_uuid"].value == calls.inits[0]["uuid"]


def test_sdk_failure_is_contained(
    calls: CapturedCalls,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    atrack_log_guard: LogGuard,
) -> None:
    from atrack_integrations.django import conf

    atrack_log_guard.expect_errors()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("A-Track internals exploded")

    monkeypatch.setattr(conf, "get_config", broken)
    with caplog.at_level(logging.ERROR, logger="atrack"):
        resp = Client().get("/plain")
        aresp = aget(AsyncClient(), "/plain")
    assert (resp.status_code, resp.content) == (200, b"plain")
    assert (aresp.status_code, aresp.content) == (200, b"plain")
    assert "goes on untracked" in caplog.text


def test_request_finished_without_user_touching_request_user(calls: CapturedCalls) -> None:
    # No identify hook: the middleware itself never evaluates request.user.
    with override_settings(ATRACK=atrack_settings(IDENTIFY=None)):
        Client().get("/track", HTTP_X_TEST_USER="user-7")
    assert testapp.SYNC_USER_LOADS == []


# --------------------------------------------------------------------------- ASGI mode


def test_middleware_is_native_in_both_modes() -> None:
    def sync_view(request: Any) -> Any:
        return None

    async def async_view(request: Any) -> Any:
        return None

    assert ATrackMiddleware.sync_capable
    assert ATrackMiddleware.async_capable
    assert not iscoroutinefunction(ATrackMiddleware(sync_view))
    assert iscoroutinefunction(ATrackMiddleware(async_view))


def test_async_view_through_the_async_client(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)):
        client = AsyncClient()
        resp = aget(client, "/atrack?source=ads", headers={"user-agent": UA})
        uuid = resp.json()["uuid"]
        assert resp.cookies["atrack_uuid"].value == uuid
        again = aget(client, "/atrack")  # the client's jar sends the cookie back
        assert again.json()["uuid"] == uuid
        assert "atrack_uuid" not in again.cookies
        fresh = aget(AsyncClient(), "/atrack", headers={"cookie": f"atrack_uuid={uuid}"})
        assert fresh.json()["uuid"] == uuid
    assert len(calls.inits) == 1
    assert [e["uuid"] for e in calls.events] == [uuid, uuid, uuid]
    assert calls.events[0]["context"]["url"] == "/atrack?source=ads"
    assert calls.events[0]["context"]["userAgent"] == UA


def test_async_identify_uses_auser_and_never_request_user(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)):
        resp = aget(AsyncClient(), "/atrack", headers={"x-test-user": "user-9"})
    assert resp.json()["uuid"] == "user-9"
    assert testapp.SYNC_USER_LOADS == []


def test_sync_identify_under_asgi_runs_off_the_event_loop(calls: CapturedCalls) -> None:
    # The settings' IDENTIFY is the sync hook reading request.user: under ASGI it must
    # not run on the event loop (the fake user loader raises there, like a DB query).
    resp = aget(AsyncClient(), "/atrack", headers={"x-test-user": "user-3"})
    assert resp.json()["uuid"] == "user-3"
    assert testapp.SYNC_USER_LOADS == ["/atrack"]


def test_async_mode_has_no_thread_hop(
    calls: CapturedCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []

    async def hook(request: Any) -> str | None:
        threads.append(threading.get_ident())
        return None

    async def view(request: Any) -> Any:
        threads.append(threading.get_ident())
        return await testapp.atrack_view(request)

    monkeypatch.setattr(testapp, "aidentify", hook)
    (pattern,) = [p for p in testapp.urlpatterns if str(p.pattern) == "atrack"]
    monkeypatch.setattr(pattern, "callback", view)
    with override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)):
        aget(AsyncClient(), "/atrack")
    assert len(threads) == 2
    assert threads[0] == threads[1]


def test_async_view_exceptions_propagate_unchanged() -> None:
    with (
        override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)),
        pytest.raises(ValueError, match="boom from the async view"),
    ):
        aget(AsyncClient(), "/aboom")


def test_sync_view_under_async_client(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)):
        resp = aget(AsyncClient(), "/track")
    assert resp.cookies["atrack_uuid"].value == calls.events[0]["uuid"]


def test_cookie_survives_pickling_and_copy() -> None:
    import copy
    import pickle

    resp = Client().get("/track", secure=True)
    line = resp.cookies["atrack_uuid"].OutputString()
    assert line.endswith("; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax; Secure")
    for clone in (pickle.loads(pickle.dumps(resp.cookies)), copy.deepcopy(resp.cookies)):
        assert clone["atrack_uuid"].OutputString() == line
        assert clone["atrack_uuid"]["max-age"] == "31536000"


# --------------------------------------------------------------------------- identify hooks


BUILTIN = {"IDENTIFY": "atrack_integrations.django.identify_user"}


def test_identify_user_under_wsgi_reads_request_user(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**BUILTIN)):
        assert Client().get("/track", HTTP_X_TEST_USER="user-1").json()["uuid"] == "user-1"
        anonymous = Client().get("/track").json()["uuid"]
    assert anonymous != "user-1"
    assert testapp.SYNC_USER_LOADS == ["/track", "/track"]


def test_identify_user_under_asgi_awaits_auser(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**BUILTIN)):
        resp = aget(AsyncClient(), "/atrack", headers={"x-test-user": "user-2"})
    assert resp.json()["uuid"] == "user-2"
    assert testapp.SYNC_USER_LOADS == []  # auser(), never the lazy request.user


@pytest.mark.parametrize(
    "hook",
    [
        "atrack_integrations.django.identify_user",
        "tests.integrations.django.testapp.identify",
        "tests.integrations.django.testapp.aidentify",
    ],
)
def test_every_hook_under_wsgi_in_an_async_view(
    calls: CapturedCalls, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Django runs an async view under WSGI in an event loop of its own; the view's
    # track() asks for the identity there, where request.user may not be loaded.
    with (
        caplog.at_level(logging.ERROR, logger="atrack"),
        override_settings(ATRACK=atrack_settings(IDENTIFY=hook)),
    ):
        resp = Client().get("/atrack", HTTP_X_TEST_USER="user-5")
    assert resp.json()["uuid"] == "user-5"
    assert [e["uuid"] for e in calls.events] == ["user-5"]
    assert not [r for r in caplog.records if r.name.startswith("atrack")], caplog.text


def test_async_hook_under_wsgi(calls: CapturedCalls) -> None:
    with override_settings(ATRACK=atrack_settings(**AUTH_ASYNC)):
        resp = Client().get("/track", HTTP_X_TEST_USER="user-4")
    assert resp.json()["uuid"] == "user-4"


def test_failing_hook_falls_back_to_the_cookie(
    calls: CapturedCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: Any) -> str:
        raise RuntimeError("auth backend down")

    monkeypatch.setattr(testapp, "identify", broken)
    with override_settings(ATRACK=atrack_settings()):  # rebuilt: picks up the patched hook
        client = Client()
        first = client.get("/track").json()["uuid"]
        assert client.get("/track").json()["uuid"] == first


def test_get_tracker() -> None:
    from django.test import RequestFactory

    from atrack_integrations.django import get_tracker

    request = RequestFactory().get("/")
    with pytest.raises(RuntimeError, match="MIDDLEWARE"):
        get_tracker(request)
    resp = Client().get("/whoami")
    assert resp.json()["uuid"] == resp.wsgi_request.atrack.uuid
    assert get_tracker(resp.wsgi_request) is resp.wsgi_request.atrack
