"""ATrackMiddleware in-process: the lifecycle of SPEC section 6 through a Starlette app."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from atrack_core import ATrackSdk, MemoryStorage, Options
from atrack_core.testing import CapturedCalls
from atrack_integrations import RequestTracker
from atrack_integrations.asgi import ATrackMiddleware
from tests.integrations.asgi_helpers import (
    KNOWN,
    UUID_RE,
    AppError,
    LogRecorder,
    call,
    cookie_attributes,
    cookie_value,
    make_app,
    record_atrack_logs,
)


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogRecorder]:
    with record_atrack_logs() as recorder:
        yield recorder


# ------------------------------------------------------------------ cookie and /init


def test_first_visit_gets_a_uuid_cookie_and_one_init(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk)
    first = call(
        app,
        "GET",
        "/?source=google&token=s3cret",
        headers={
            "user-agent": "UA/1",
            "accept-language": "de-de,en;q=0.5",
            "referer": "https://g.co/",
        },
    )
    assert first.status_code == 200
    uuid = cookie_value(first)
    assert uuid is not None
    assert UUID_RE.match(uuid)
    assert first.text == uuid
    assert cookie_attributes(first) == [
        "Path=/",
        "Max-Age=31536000",
        "HttpOnly",
        "SameSite=Lax",
    ]  # no Secure on plain http
    (init,) = calls.inits
    assert init["uuid"] == uuid
    assert init["isNewUser"] is True
    assert init["context"] == {
        "url": "/?source=google&token=[Filtered]",
        "referer": "https://g.co/",
        "ipAddress": "127.0.0.1",
        "userAgent": "UA/1",
        "locale": "de-DE",
    }
    (event,) = calls.events
    assert event["uuid"] == uuid
    assert event["event"] == "page_viewed"
    assert event["context"] == init["context"]
    assert event["attributes"] == {"source": "google"}

    # The returning visitor: same uuid, no new cookie, no second /init within init_ttl.
    second = call(app, "GET", "/?source=mail", cookie=f"other=1; atrack_uuid={uuid}")
    assert second.text == uuid
    assert cookie_value(second) is None
    assert len(calls.inits) == 1
    assert [e["uuid"] for e in calls.events] == [uuid, uuid]
    assert calls.events[1]["context"]["url"] == "/?source=mail"


def test_returning_visitor_without_prior_init_in_this_process_gets_one(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = make_app(sdk)
    call(app, cookie=f"atrack_uuid={KNOWN}")
    call(app, cookie=f"atrack_uuid={KNOWN}")
    (init,) = calls.inits
    assert init["uuid"] == KNOWN
    assert init["isNewUser"] is False


@pytest.mark.parametrize(
    "cookie",
    [
        "atrack_uuid=not-a-uuid",
        f"atrack_uuid={KNOWN.upper()}",  # not canonical
        f"atrack_uuid={KNOWN[:-1]}",
        f"atrack_uuid={KNOWN}x",
        f"atrack_uuid={{{KNOWN}}}",
        f"atrack_uuid={KNOWN.replace('-', '')}",
        "atrack_uuid=",
        'atrack_uuid="<script>"',
        f"xatrack_uuid={KNOWN}",  # another cookie's name
    ],
)
def test_forged_or_malformed_cookie_is_replaced(
    sdk: ATrackSdk, calls: CapturedCalls, cookie: str
) -> None:
    response = call(make_app(sdk), cookie=cookie)
    new = cookie_value(response)
    assert new is not None
    assert UUID_RE.match(new)
    assert new != KNOWN
    assert calls.inits[0]["uuid"] == new
    assert calls.inits[0]["isNewUser"] is True


def test_quoted_canonical_cookie_is_accepted(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(make_app(sdk), cookie=f'atrack_uuid="{KNOWN}"')
    assert response.text == KNOWN
    assert cookie_value(response) is None


def test_cookie_attributes_on_https(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(make_app(sdk), scheme="https")
    assert cookie_attributes(response) == [
        "Path=/",
        "Max-Age=31536000",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ]


@pytest.mark.parametrize(
    ("settings", "scheme", "expected"),
    [
        (
            {"cookie_secure": True},
            "http",
            ["Path=/", "Max-Age=31536000", "HttpOnly", "SameSite=Lax", "Secure"],
        ),
        (
            {"cookie_secure": False},
            "https",
            ["Path=/", "Max-Age=31536000", "HttpOnly", "SameSite=Lax"],
        ),
        (
            {"cookie_domain": ".shop.example", "cookie_max_age": 3600, "cookie_samesite": "strict"},
            "http",
            ["Path=/", "Max-Age=3600", "Domain=.shop.example", "HttpOnly", "SameSite=Strict"],
        ),
        (
            {"cookie_samesite": "None"},
            "http",
            ["Path=/", "Max-Age=31536000", "HttpOnly", "SameSite=None", "Secure"],
        ),
        ({"cookie_samesite": None, "cookie_max_age": None}, "http", ["Path=/", "HttpOnly"]),
    ],
)
def test_cookie_settings(
    sdk: ATrackSdk, calls: CapturedCalls, settings: dict[str, Any], scheme: str, expected: list[str]
) -> None:
    response = call(make_app(sdk, **settings), scheme=scheme)
    assert cookie_attributes(response) == expected


def test_cookie_name_is_configurable(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk, cookie_name="visitor")
    response = call(app, cookie=f"atrack_uuid={KNOWN}")
    uuid = cookie_value(response, "visitor")
    assert uuid is not None
    assert uuid != KNOWN
    assert call(app, cookie=f"visitor={uuid}").text == uuid


def test_existing_set_cookie_headers_are_kept(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def view(request: Any) -> PlainTextResponse:
        response = PlainTextResponse("ok", headers={"x-app": "1"})
        response.set_cookie("session", "abc")
        return response

    app = Starlette(routes=[Route("/", view)])
    app.add_middleware(ATrackMiddleware, sdk=sdk)
    response = call(app)
    assert response.headers["x-app"] == "1"
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("session=abc")
    assert response.text == "ok"


# ------------------------------------------------------------------ exclusions


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/health/"),
        ("GET", "/static/app.js"),
        ("HEAD", "/page"),
        ("OPTIONS", "/page"),
    ],
)
def test_excluded_requests_get_a_passive_tracker(
    sdk: ATrackSdk, calls: CapturedCalls, method: str, path: str
) -> None:
    # /health/ has no route (404), but the exclusion still applies before routing.
    response = call(make_app(sdk), method, path)
    assert cookie_value(response) is None
    assert calls.inits == []


def test_passive_tracker_still_tracks(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk)
    response = call(app, "GET", "/health", cookie=f"atrack_uuid={KNOWN}")
    assert response.text == KNOWN
    assert cookie_value(response) is None
    assert calls.inits == []
    assert [(e["event"], e["uuid"]) for e in calls.events] == [("page_viewed", KNOWN)]
    # Without a cookie the passive tracker invents a uuid only because the view asked.
    anonymous = call(app, "GET", "/health")
    assert UUID_RE.match(anonymous.text)
    assert cookie_value(anonymous) is None


def test_custom_exclude_paths(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk, exclude_paths=["/quiet", "/sig*"])
    call(app, "GET", "/quiet")
    call(app, "POST", "/signup")
    assert calls.inits == []
    call(app, "GET", "/health")  # no longer excluded
    assert len(calls.inits) == 1


# ------------------------------------------------------------------ init modes


def test_eager_init_without_any_track(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(make_app(sdk), "GET", "/quiet")
    assert len(calls.inits) == 1
    assert calls.events == []


def test_lazy_init_waits_for_the_first_track(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk, init="lazy")
    quiet = call(app, "GET", "/quiet")
    uuid = cookie_value(quiet)
    assert uuid is not None
    assert calls.inits == []
    call(app, "GET", "/", cookie=f"atrack_uuid={uuid}")
    call(app, "GET", "/", cookie=f"atrack_uuid={uuid}")
    assert [c.path for c in calls.calls] == ["/init", "/event", "/event"]
    assert calls.inits[0]["isNewUser"] is False  # the uuid came from the cookie by then


def test_lazy_init_before_set_attributes(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(make_app(sdk, init="lazy"), "POST", "/signup?plan=pro")
    assert [c.path for c in calls.calls] == ["/init", "/attributes"]
    assert calls.inits[0]["isNewUser"] is True
    assert calls.attributes[0]["attributes"] == {"plan": "pro"}


def test_init_off(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(make_app(sdk, init="off"), "GET", "/")
    assert cookie_value(response) is not None
    assert [c.path for c in calls.calls] == ["/event"]


def test_init_dedupe_is_shared_through_the_storage(calls: CapturedCalls) -> None:
    # Two "workers": separate SDKs and middlewares, one shared storage.
    storage = MemoryStorage()
    sdks = [ATrackSdk(Options("pub_test_1234", disabled=True, storage=storage)) for _ in range(2)]
    try:
        apps = [make_app(s) for s in sdks]
        for app in apps * 3:
            call(app, cookie=f"atrack_uuid={KNOWN}")
        assert len(calls.inits) == 1
    finally:
        for s in sdks:
            s.shutdown()


def test_init_again_after_init_ttl(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # The second call must come within the TTL: 0.5 s, so that a loaded machine does
    # not make it a third /init (a sleep past the TTL is always enough for the third).
    app = make_app(sdk, init_ttl=0.5)
    call(app, cookie=f"atrack_uuid={KNOWN}")
    call(app, cookie=f"atrack_uuid={KNOWN}")
    time.sleep(0.55)
    call(app, cookie=f"atrack_uuid={KNOWN}")
    assert [i["isNewUser"] for i in calls.inits] == [False, False]


def test_set_attributes_and_signup(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(make_app(sdk), "POST", "/signup?plan=business", cookie=f"atrack_uuid={KNOWN}")
    assert response.json() == {"uuid": KNOWN}
    (attrs,) = calls.attributes
    assert attrs["uuid"] == KNOWN
    assert attrs["mode"] == "merge"
    assert attrs["attributes"] == {"plan": "business"}


def test_requests_never_touch_the_sdk_current_user(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk)
    call(app)
    call(app, "POST", "/login?uuid=user-42")
    assert sdk.get_user() is None


# ------------------------------------------------------------------ identify


def test_identify_hook_sync_wins_over_the_cookie(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    seen: list[Any] = []

    def identify(request: Any) -> str | None:
        seen.append(request)
        return request.headers.get("x-user")

    app = make_app(sdk, identify=identify)
    logged_in = call(app, headers={"x-user": "user-42"}, cookie=f"atrack_uuid={KNOWN}")
    assert logged_in.text == "user-42"
    assert cookie_value(logged_in) is None  # the cookie keeps the anonymous id
    assert calls.inits[0]["uuid"] == "user-42"
    assert calls.inits[0]["isNewUser"] is False
    assert calls.events[0]["uuid"] == "user-42"
    # The hook receives a Starlette Request (it is also a mapping over the scope).
    assert seen[0].url.path == "/"
    assert seen[0]["type"] == "http"

    anonymous = call(app, cookie=f"atrack_uuid={KNOWN}")
    assert anonymous.text == KNOWN


def test_identify_hook_async(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    async def identify(request: Any) -> str | None:
        await asyncio.sleep(0)
        return "user-7"

    response = call(make_app(sdk, identify=identify))
    assert response.text == "user-7"
    assert calls.inits[0]["uuid"] == "user-7"


def test_identify_hook_may_return_uuid_or_int(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    import uuid as uuid_module

    assert call(make_app(sdk, identify=lambda r: 42)).text == "42"
    u = uuid_module.UUID(KNOWN)
    assert call(make_app(sdk, identify=lambda r: u)).text == KNOWN


@pytest.mark.parametrize("bad", ["", "x" * 300, "a\nb", object()])
def test_identify_hook_failures_fall_back_to_the_cookie(
    sdk: ATrackSdk, calls: CapturedCalls, logs: LogRecorder, bad: Any
) -> None:
    def identify(request: Any) -> Any:
        return bad

    response = call(make_app(sdk, identify=identify), cookie=f"atrack_uuid={KNOWN}")
    assert response.status_code == 200
    assert response.text == KNOWN
    assert any("identify hook failed" in m for m in logs.messages())


def test_identify_hook_raising(sdk: ATrackSdk, calls: CapturedCalls, logs: LogRecorder) -> None:
    async def identify(request: Any) -> str:
        raise LookupError("session store down")

    response = call(make_app(sdk, identify=identify))
    assert response.status_code == 200
    assert UUID_RE.match(response.text)
    assert any("identify hook failed" in m for m in logs.messages())


def test_identify_in_the_view_switches_user_and_cookie(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = make_app(sdk)
    other = "11111111-2222-4333-8444-555555555555"
    response = call(app, "POST", f"/login?uuid={other}&attrs=1", cookie=f"atrack_uuid={KNOWN}")
    assert response.json() == {"uuid": other}
    assert cookie_value(response) == other
    # The eager /init goes out at the response start: the view switched the user
    # before anything was sent, so the cookie's user gets none.
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [
        ("/init", other),
        ("/event", other),
    ]
    assert calls.inits[0]["attributes"] == {"plan": "pro"}
    assert calls.inits[0]["isNewUser"] is False


def test_identify_in_the_view_with_a_server_id_keeps_the_cookie(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    response = call(make_app(sdk), "POST", "/login?uuid=user-42")
    anonymous = cookie_value(response)
    # The generated anonymous uuid is still written; "user-42" never goes in the cookie.
    assert anonymous is not None
    assert UUID_RE.match(anonymous)
    assert response.json() == {"uuid": "user-42"}
    # The anonymous visitor tracked nothing before the switch: no /init for it.
    assert [c.body["uuid"] for c in calls.calls] == ["user-42", "user-42"]


def test_identify_attributes_for_an_already_initialised_user(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = make_app(sdk)
    call(app, "POST", "/login?uuid=user-42")
    calls.clear()
    call(app, "POST", "/login?uuid=user-42&attrs=1")
    # The anonymous visitor of each request tracked nothing: no /init for it.
    assert [c.path for c in calls.calls] == ["/attributes", "/event"]
    assert calls.attributes[0]["attributes"] == {"plan": "pro"}


# ------------------------------------------------------------------ DNT / GPC


@pytest.mark.parametrize("header", [{"dnt": "1"}, {"sec-gpc": "1"}])
def test_respect_dnt_makes_the_tracker_a_no_op(
    sdk: ATrackSdk, calls: CapturedCalls, header: dict[str, str]
) -> None:
    app = make_app(sdk, respect_dnt=True)
    response = call(app, headers=header)
    assert response.status_code == 200
    assert cookie_value(response) is None
    assert calls.calls == []
    # Bad input still fails at the call, so a bug cannot hide behind a browser setting.
    with pytest.raises(ValueError, match="must not be empty"):
        call(app, "GET", "/bad", headers=header)


def test_dnt_is_ignored_by_default(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(make_app(sdk), headers={"dnt": "1", "sec-gpc": "1"})
    assert len(calls.inits) == 1
    assert len(calls.events) == 1


def test_dnt_0_is_tracked(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(make_app(sdk, respect_dnt=True), headers={"dnt": "0"})
    assert len(calls.events) == 1


# ------------------------------------------------------------------ errors


def test_bad_input_to_track_reaches_the_view(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        call(make_app(sdk), "GET", "/bad")


def test_app_exceptions_propagate_unchanged(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    with pytest.raises(AppError, match="the app's own failure"):
        call(make_app(sdk), "GET", "/boom")
    assert calls.event_names() == ["about_to_fail"]


class BrokenStorage(MemoryStorage):
    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        raise ConnectionError("redis down")


def test_failing_storage_is_a_miss(calls: CapturedCalls, logs: LogRecorder) -> None:
    sdk = ATrackSdk(Options("pub_test_1234", disabled=True, storage=BrokenStorage()))
    try:
        app = make_app(sdk)
        for _ in range(3):
            assert call(app, cookie=f"atrack_uuid={KNOWN}").status_code == 200
        # Off the event loop, the storage is asked by the background worker.
        assert config_of(app).drain(5.0)
    finally:
        sdk.shutdown()
    # The local memory of recent inits stops a storm of /init while the storage is down.
    assert len(calls.inits) == 1
    warnings = [m for m in logs.messages() if "storage failed" in m]
    assert len(warnings) == 1  # rate-limited


def config_of(app: Any) -> Any:
    """The IntegrationConfig of the ATrackMiddleware inside a Starlette app."""
    mw = app.middleware_stack  # built by the first request
    while not isinstance(mw, ATrackMiddleware):
        mw = mw.app
    return mw.config


class ExplodingSdk(ATrackSdk):
    # The integrations' internal path into the SDK.
    def _init_checked(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("broken SDK")

    def _event_in_request(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("broken SDK")


def test_a_broken_sdk_never_reaches_the_app(logs: LogRecorder) -> None:
    logs.expect_errors()
    sdk = ExplodingSdk(Options("pub_test_1234", disabled=True))
    try:
        response = call(make_app(sdk))
    finally:
        sdk.shutdown()
    assert response.status_code == 200
    assert UUID_RE.match(response.text)
    errors = logs.messages(logging.ERROR)
    assert any("/init" in m for m in errors)
    assert any("track() failed" in m for m in errors)


def test_middleware_failure_before_the_app_is_contained(
    sdk: ATrackSdk, calls: CapturedCalls, logs: LogRecorder
) -> None:
    logs.expect_errors()
    app = make_app(sdk)

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        # A server handing over a scope without headers: the middleware cannot read it,
        # the app still runs.
        scope = {k: v for k, v in scope.items() if k != "headers"}
        await inner(scope, receive, send)

    inner = ATrackMiddleware(_tracking_app, sdk=sdk)
    response = call(raw)
    assert response.status_code == 200
    assert response.text == "no-op"  # a no-op tracker: the view's code still works
    assert cookie_value(response) is None
    assert calls.calls == []
    assert any("middleware failed" in m for m in logs.messages(logging.ERROR))
    del app


async def _tracking_app(scope: Any, receive: Any, send: Any) -> None:
    tracker = scope["state"]["atrack"]
    tracker.track("viewed")
    text = b"active" if tracker.enabled else b"no-op"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text})


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    text = b"tracker" if "atrack" in scope.get("state", {}) else b"no tracker"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text})


def test_cookie_failure_on_response_is_contained(
    sdk: ATrackSdk, calls: CapturedCalls, logs: LogRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.expect_errors()
    app = make_app(sdk)
    mw = app.build_middleware_stack()

    def broken(tracker: RequestTracker, status: int) -> str | None:
        raise RuntimeError("boom")

    # Reach the middleware instance inside Starlette's stack.
    while not isinstance(mw, ATrackMiddleware):
        mw = mw.app
    monkeypatch.setattr(mw.config, "finish", broken)
    response = call(mw)
    assert response.status_code == 200
    assert cookie_value(response) is None
    assert any("could not set its cookie" in m for m in logs.messages(logging.ERROR))


# ------------------------------------------------------------------ plumbing


def test_installed_twice_does_the_work_once(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk)
    app.add_middleware(ATrackMiddleware, sdk=sdk)
    response = call(app)
    assert len(response.headers.get_list("set-cookie")) == 1
    assert len(calls.inits) == 1
    assert len(calls.events) == 1


def test_pure_asgi_app_without_state_gets_one(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    response = call(ATrackMiddleware(_ok_app, sdk=sdk))
    assert response.text == "tracker"
    assert cookie_value(response) is not None


def test_scope_without_optional_keys(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    mw = ATrackMiddleware(_ok_app, sdk=sdk)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(mw(scope, receive, send))
    assert sent[1]["body"] == b"tracker"
    assert calls.inits[0]["context"] == {"url": "/"}


def test_other_scope_types_pass_untouched(sdk: ATrackSdk) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    mw = ATrackMiddleware(app, sdk=sdk)

    async def noop(*args: Any) -> Any:
        return None

    scope = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(mw(scope, noop, noop))
    assert seen == [{"type": "websocket", "path": "/ws", "headers": []}]


def test_tracker_repr_and_context(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    trackers: list[RequestTracker] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        trackers.append(scope["state"]["atrack"])
        await _ok_app(scope, receive, send)

    call(
        ATrackMiddleware(app, sdk=sdk, init="off"),
        "GET",
        "/x?password=1",
        cookie=f"atrack_uuid={KNOWN}",
    )
    (tracker,) = trackers
    assert tracker.uuid == KNOWN
    assert tracker.is_new_user is False
    assert tracker.context["url"] == "/x?password=[Filtered]"
    tracker.context["url"] = "changed"  # a copy
    assert tracker.context["url"] == "/x?password=[Filtered]"
    assert KNOWN in repr(tracker)


def test_sdk_is_built_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, calls: CapturedCalls
) -> None:
    monkeypatch.setenv("ATRACK_PUBLIC_KEY", "pub_from_env_9876")
    monkeypatch.setenv("ATRACK_DISABLED", "1")
    mw = ATrackMiddleware(_ok_app)
    try:
        assert mw.sdk.options.public_key == "pub_from_env_9876"
        assert call(mw).text == "tracker"
    finally:
        mw.sdk.shutdown()


# ------------------------------------------------------------------ client address


def test_forged_forwarded_for_is_ignored_by_default(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(
        make_app(sdk),
        headers={"x-forwarded-for": "6.6.6.6", "forwarded": "for=7.7.7.7"},
        client=("203.0.113.9", 4000),
    )
    assert calls.inits[0]["context"]["ipAddress"] == "203.0.113.9"
    assert calls.events[0]["context"]["ipAddress"] == "203.0.113.9"


def test_forwarded_for_is_honoured_only_through_a_trusted_proxy(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = make_app(sdk, trusted_proxies=["10.0.0.0/8"], init="off")
    xff = {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.3"}
    call(app, headers=xff, client=("10.0.0.2", 4000))
    call(app, headers=xff, client=("203.0.113.9", 4000))  # not a proxy: header ignored
    assert [e["context"]["ipAddress"] for e in calls.events] == ["198.51.100.7", "203.0.113.9"]


def test_ip_modes(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    call(make_app(sdk, ip="anonymize", init="off"), client=("198.51.100.7", 1))
    call(make_app(sdk, ip="none", init="off"), client=("198.51.100.7", 1))
    assert calls.events[0]["context"]["ipAddress"] == "198.51.100.0"
    assert "ipAddress" not in calls.events[1]["context"]


def test_timezone_from_cookie_or_header(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = make_app(sdk, init="off", timezone_header="x-tz")
    call(app, cookie=f"atrack_uuid={KNOWN}; atrack_tz=Europe%2FBerlin")
    call(app, headers={"x-tz": "America/New_York"})
    call(app, headers={"x-tz": "../../etc/passwd"})
    assert [e["context"].get("timezone") for e in calls.events] == [
        "Europe/Berlin",
        "America/New_York",
        None,
    ]


def test_split_cookie_headers_are_joined(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # HTTP/2 clients may send one cookie header per cookie.
    mw = ATrackMiddleware(_ok_app, sdk=sdk, init="off")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [
            (b"cookie", b"a=1"),
            (b"cookie", f"atrack_uuid={KNOWN}".encode()),
            (b"cookie", b"atrack_tz=Europe%2FParis"),
        ],
    }
    asyncio.run(mw(scope, receive, send))
    assert sent[0]["headers"] == []  # the cookie was found: nothing to set
    assert scope["state"]["atrack"].uuid == KNOWN
    assert scope["state"]["atrack"].context["timezone"] == "Europe/Paris"


# ------------------------------------------------------------------ lifespan


class SpySdk(ATrackSdk):
    def __init__(self, events: list[str]) -> None:
        super().__init__(Options("pub_test_1234", disabled=True, shutdown_timeout=2.0))
        self.events = events

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        # What is left of shutdown_timeout from the server's stop (a hair under it).
        self.events.append(f"flush({timeout if timeout is None else round(timeout, 1)})")
        return True


def run_lifespan(app: Any, *, complete: bool = True) -> list[str]:
    """Drive the lifespan protocol as a server does; return what happened, in order."""
    events: list[str] = []
    sdk = SpySdk(events)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        message = messages.pop(0)
        events.append(message["type"])
        return message

    async def send(message: dict[str, Any]) -> None:
        events.append("server got " + message["type"])

    try:
        asyncio.run(
            ATrackMiddleware(app(complete, events), sdk=sdk)({"type": "lifespan"}, receive, send)
        )
    finally:
        sdk.shutdown()
    return events


def lifespan_app(complete: bool, events: list[str] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if events is not None:
                events.append("app got " + message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                if complete:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def test_lifespan_flushes_before_the_app_and_again_before_the_server_hears() -> None:
    # SPEC 6: "on lifespan.shutdown flushes the SDK (bounded) before passing the message
    # on"; the second flush takes what the app's shutdown handlers tracked.
    assert run_lifespan(lifespan_app) == [
        "lifespan.startup",
        "app got lifespan.startup",
        "server got lifespan.startup.complete",
        "lifespan.shutdown",
        "flush(2.0)",
        "app got lifespan.shutdown",
        "flush(2.0)",
        "server got lifespan.shutdown.complete",
    ]


def test_lifespan_flushes_even_when_the_app_does_not_answer_shutdown() -> None:
    events = run_lifespan(lifespan_app, complete=False)
    assert events[-4:] == [
        "lifespan.shutdown",
        "flush(2.0)",
        "app got lifespan.shutdown",
        "flush(2.0)",
    ]


def test_lifespan_flush_that_runs_out_of_time_is_not_repeated() -> None:
    events: list[str] = []

    class Unreachable(SpySdk):
        async def aflush(self, timeout: float | None = 5.0) -> bool:
            events.append("flush")
            return False  # the API did not take everything within shutdown_timeout

    sdk = Unreachable(events)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        events.append("server got " + message["type"])

    try:
        mw = ATrackMiddleware(lifespan_app(True, events), sdk=sdk)
        asyncio.run(mw({"type": "lifespan"}, receive, send))
    finally:
        sdk.shutdown()
    assert events == [
        "app got lifespan.startup",
        "server got lifespan.startup.complete",
        "flush",
        "app got lifespan.shutdown",
        "server got lifespan.shutdown.complete",
    ]


def test_lifespan_flush_failure_is_contained(logs: LogRecorder) -> None:
    logs.expect_errors()

    class Broken(SpySdk):
        async def aflush(self, timeout: float | None = 5.0) -> bool:
            raise RuntimeError("flush broke")

    events: list[str] = []
    sdk = Broken(events)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])

    try:
        mw = ATrackMiddleware(lifespan_app(True), sdk=sdk)
        asyncio.run(mw({"type": "lifespan"}, receive, send))
    finally:
        sdk.shutdown()
    assert events == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert any("flush at shutdown failed" in m for m in logs.messages(logging.ERROR))


def test_lifespan_state_with_the_same_key_is_not_a_second_installation(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    mw = ATrackMiddleware(_ok_app, sdk=sdk)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "state": {"atrack": 1}}
    asyncio.run(mw(scope, receive, send))
    assert isinstance(scope["state"]["atrack"], RequestTracker)
    assert len(calls.inits) == 1


class SlowStorage(MemoryStorage):
    """A storage whose ``add`` blocks, like a slow network round trip, until ``parties``
    adds are in progress at once. Adds made one at a time (on the event loop) never all
    get there: each gives up after 10 s and raises, which the SDK logs as a miss."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.add_threads: list[str] = []
        self.met = 0
        self._lock = threading.Lock()

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        self.add_threads.append(threading.current_thread().name)
        self.barrier.wait()
        with self._lock:
            self.met += 1
        return super().add(key, value, ttl)


@pytest.mark.parametrize(
    ("init", "method", "path"),
    [
        ("eager", "GET", "/"),  # track() in the view: the init before the event
        ("lazy", "GET", "/"),
        ("eager", "POST", "/login?uuid=user-{n}"),  # tracker.identify() in the view
        ("lazy", "POST", "/login?uuid=user-{n}&attrs=1"),  # identify() with attributes
    ],
)
def test_a_slow_storage_does_not_hold_the_event_loop(
    calls: CapturedCalls, init: str, method: str, path: str
) -> None:
    # Any storage but the plain MemoryStorage (even a subclass) may block on I/O: the
    # init dedupe, lazy or eager, from begin, track() or identify(), runs off the loop.
    storage = SlowStorage(4)
    sdk = ATrackSdk(Options("pub_test_1234", disabled=True, storage=storage))
    app = make_app(sdk, init=init)

    async def visit(n: int) -> httpx.Response:
        # One client each: four first visits, no cookie shared between them.
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as http:
            return await http.request(method, path.format(n=n))

    async def go() -> None:
        # Four first visits at once: with the add on the event loop the first would hold
        # the loop and the other three could never start theirs. No wall-clock bound:
        # the four adds must be in progress together.
        responses = await asyncio.gather(*(visit(n) for n in range(4)))
        assert all(r.status_code == 200 for r in responses)

    try:
        asyncio.run(go())
        assert config_of(app).drain(15.0)
    finally:
        sdk.shutdown()
    assert storage.met == 4
    assert len(calls.inits) == 4
    assert "MainThread" not in storage.add_threads


def test_get_tracker_without_the_middleware_names_the_asgi_import() -> None:
    from atrack_integrations.asgi import Receive, Scope, Send, get_tracker

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        get_tracker(scope)

    with pytest.raises(RuntimeError, match="no A-Track tracker") as missing:
        call(app)
    assert "(from atrack_integrations.asgi import ATrackMiddleware)" in str(missing.value)


def test_repeated_headers_are_read_joined_in_order(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # Read in one join at the end (repeated lines used to be appended one by one, a
    # quadratic cost a client controls); what is read is unchanged: Cookie lines joined
    # with "; ", other headers with ", ", in their order.
    app = make_app(sdk, trusted_proxies=["127.0.0.1"])
    headers = (
        [
            ("cookie", "a=1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("cookie", "b=2"),
            ("x-forwarded-for", "127.0.0.1"),
            ("cookie", f"atrack_uuid={KNOWN}"),
        ]
        + [("accept-language", "fr;q=0.5")] * 3
        + [("accept-language", "de;q=0.9")]
    )

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as http:
            return await http.get("/", headers=headers)

    response = asyncio.run(go())
    assert response.text == KNOWN  # the uuid cookie of the third Cookie line
    [event] = calls.events
    assert event["context"]["ipAddress"] == "203.0.113.9"
    assert event["context"]["locale"] == "de", event["context"]
