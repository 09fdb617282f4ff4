"""The shared lifecycle directly: configuration checks and the adapter-facing API."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from threading import Condition
from typing import Any

import pytest

from atrack_core import ATrackSdk, MemoryStorage, Options
from atrack_core._request import RequestView
from atrack_core.testing import CapturedCalls
from atrack_integrations import DEFAULT_EXCLUDE_PATHS, IntegrationConfig, RequestTracker, _tracker
from atrack_integrations._lifecycle import SETTING_NAMES, is_canonical_uuid, resolve_sdk
from tests.integrations.asgi_helpers import KNOWN, LogRecorder, record_atrack_logs
from tests.pause import WAIT, PausedThread


@pytest.fixture
def logs() -> Iterator[LogRecorder]:
    with record_atrack_logs() as recorder:
        yield recorder


def view(
    path: str = "/",
    *,
    method: str = "GET",
    cookie: str | None = None,
    scheme: str = "http",
    **headers: str,
) -> RequestView:
    h = {k.replace("_", "-"): v for k, v in headers.items()}
    if cookie is not None:
        h["cookie"] = cookie
    return RequestView(method, scheme, "shop.example", path, "", h, "127.0.0.1")


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"cookie_name": "bad name"}, ValueError, "cookie_name"),
        ({"cookie_name": "a;b"}, ValueError, "cookie_name"),
        ({"cookie_name": ""}, TypeError, "cookie_name"),
        ({"cookie_name": 5}, TypeError, "cookie_name"),
        ({"cookie_max_age": 0}, ValueError, "cookie_max_age"),
        ({"cookie_max_age": -1}, ValueError, "cookie_max_age"),
        ({"cookie_max_age": 1.5}, ValueError, "cookie_max_age"),
        ({"cookie_max_age": True}, ValueError, "cookie_max_age"),
        ({"cookie_domain": "shop.example; Secure"}, ValueError, "cookie_domain"),
        ({"cookie_domain": "-bad-.example"}, ValueError, "cookie_domain"),
        ({"cookie_domain": 7}, TypeError, "cookie_domain"),
        ({"cookie_secure": "maybe"}, TypeError, "cookie_secure"),
        ({"cookie_samesite": "lenient"}, ValueError, "cookie_samesite"),
        ({"cookie_samesite": "None", "cookie_secure": False}, ValueError, "Secure"),
        ({"init": "always"}, ValueError, "init"),
        ({"init_ttl": 0}, ValueError, "init_ttl"),
        ({"init_ttl": "soon"}, ValueError, "init_ttl"),
        ({"init_ttl": float("inf")}, ValueError, "init_ttl"),
        ({"exclude_paths": ["health"]}, ValueError, "exclude_paths"),
        ({"exclude_paths": [1]}, TypeError, "exclude_paths"),
        ({"exclude_paths": 5}, TypeError, "exclude_paths"),
        ({"trusted_proxies": ["not-an-ip"]}, ValueError, "trusted_proxies"),
        ({"ip": "partial"}, ValueError, "ip"),
        ({"scrub_params": ["a*b"]}, ValueError, "scrub_params"),
        ({"timezone_cookie": "a b"}, ValueError, "timezone_cookie"),
        ({"timezone_header": "x:tz"}, ValueError, "timezone_header"),
        ({"respect_dnt": "sometimes"}, TypeError, "respect_dnt"),
        ({"identify": 42}, TypeError, "identify"),
        ({"identify": "no.such.module.hook"}, ValueError, "identify"),
        ({"public_key": "pub_other_5678"}, TypeError, "not both"),
    ],
)
def test_bad_settings_fail_at_setup(
    sdk: ATrackSdk, settings: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        IntegrationConfig(sdk=sdk, **settings)


def test_unknown_setting_is_a_type_error(sdk: ATrackSdk) -> None:
    with pytest.raises(TypeError, match="cookie_nam"):
        IntegrationConfig(sdk=sdk, cookie_nam="x")  # type: ignore[call-arg]


def test_settings_from_strings(sdk: ATrackSdk) -> None:
    # As they arrive from environment variables or .ini files.
    config = IntegrationConfig(
        sdk=sdk,
        cookie_max_age="600",  # type: ignore[arg-type]
        init_ttl="60",  # type: ignore[arg-type]
        respect_dnt="true",  # type: ignore[arg-type]
        cookie_secure="0",  # type: ignore[arg-type]
        exclude_paths="/a, /b/",
        trusted_proxies="10.0.0.0/8, 192.168.0.1",
    )
    assert config.cookie_max_age == 600
    assert config.init_ttl == 60.0
    assert config.respect_dnt is True
    assert config.cookie_secure is False
    assert config.exclude_paths == ("/a", "/b/")


def test_from_settings_django_and_flask_styles(sdk: ATrackSdk) -> None:
    django = IntegrationConfig.from_settings({"COOKIE_NAME": "v", "INIT": "lazy"}, sdk=sdk)
    assert (django.cookie_name, django.init) == ("v", "lazy")
    flask = IntegrationConfig.from_settings(
        {"ATRACK_COOKIE_NAME": "w", "SECRET_KEY": "ignored", "DEBUG": True},
        prefix="ATRACK_",
        sdk=sdk,
    )
    assert flask.cookie_name == "w"
    with pytest.raises(TypeError, match="ATRACK_COOKIE_NAME"):
        IntegrationConfig.from_settings({"ATRACK_COOKIES": "w"}, prefix="ATRACK_", sdk=sdk)
    assert "sdk" in SETTING_NAMES


def test_identify_as_a_dotted_path(sdk: ATrackSdk) -> None:
    config = IntegrationConfig(sdk=sdk, identify="tests.integrations.test_lifecycle.hook")
    assert config.identify is hook


def hook(request: Any) -> str:
    return "user-1"


def test_resolve_sdk(monkeypatch: pytest.MonkeyPatch, sdk: ATrackSdk) -> None:
    assert resolve_sdk(sdk) is sdk
    with pytest.raises(TypeError, match="ATrackSdk"):
        resolve_sdk("pub_xxx")  # type: ignore[arg-type]
    monkeypatch.delenv("ATRACK_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("ATRACK_DISABLED", raising=False)
    with pytest.raises(ValueError, match="ATRACK_PUBLIC_KEY"):
        resolve_sdk()
    built = resolve_sdk(
        public_key="pub_given_1234",
        geo="fra",
        delivery="sync",
        storage="atrack_core.MemoryStorage",
    )
    try:
        assert built.base_url == "https://fra.api.a-track.io"
        assert built.options.delivery == "sync"
        assert isinstance(built.storage, MemoryStorage)
    finally:
        built.shutdown()
    env = resolve_sdk(environ={"ATRACK_PUBLIC_KEY": "pub_env_1234", "ATRACK_DISABLED": "1"})
    try:
        assert env.options.public_key == "pub_env_1234"
        assert env.options.disabled
    finally:
        env.shutdown()


def test_repr_hides_the_key(sdk: ATrackSdk) -> None:
    text = repr(IntegrationConfig(sdk=sdk))
    assert "pub_test_1234" not in text
    assert "1234" in text


# ------------------------------------------------------------------ the adapter API


def test_exclusion_rules(sdk: ATrackSdk) -> None:
    config = IntegrationConfig(sdk=sdk, exclude_paths=[*DEFAULT_EXCLUDE_PATHS, "/api/internal*"])
    excluded = ["/health", "/health/", "/static", "/static/", "/static/a/b.css", "/favicon.ico"]
    excluded += ["/api/internal", "/api/internal/jobs", "/metrics"]
    tracked = ["/", "/healthcheck", "/statics", "/api/interna", "/Health"]
    assert all(config.is_excluded("GET", p) for p in excluded)
    assert not any(config.is_excluded("GET", p) for p in tracked)
    assert config.is_excluded("HEAD", "/")
    assert config.is_excluded("OPTIONS", "/")


def test_begin_and_cookie_header_for_an_adapter(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    config = IntegrationConfig(sdk=sdk)
    first = config.begin(view("/"))
    assert isinstance(first, RequestTracker)
    assert first.is_new_user
    assert is_canonical_uuid(first.uuid)
    assert calls.calls == []  # the eager /init waits for the response start
    header = config.finish(first, 200)
    assert header == (f"atrack_uuid={first.uuid}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax")
    assert config.set_cookie_header(first) == header
    again = config.begin(view("/", cookie=f"atrack_uuid={first.uuid}"))
    assert again.uuid == first.uuid
    assert not again.is_new_user
    assert config.finish(again, 200) is None
    # Frameworks that parsed the cookies already pass them in.
    parsed = config.begin(view("/"), cookies={"atrack_uuid": KNOWN})
    assert parsed.uuid == KNOWN
    config.finish(parsed, 200)
    assert [c.body["uuid"] for c in calls.calls] == [first.uuid, KNOWN]


@pytest.mark.parametrize("status", [404, 400, 500])
def test_no_user_for_error_pages_unless_the_view_tracked(
    sdk: ATrackSdk, calls: CapturedCalls, status: int
) -> None:
    # Scanners and bots hitting pages that do not exist create no user.
    config = IntegrationConfig(sdk=sdk)
    quiet = config.begin(view("/wp-login.php"))
    # No /init, and no cookie: the uuid made for this request goes with no user.
    assert config.finish(quiet, status) is None
    assert calls.calls == []
    tracked = config.begin(view("/checkout"))
    tracked.track("payment_failed")
    config.finish(tracked, status)
    assert [c.path for c in calls.calls] == ["/init", "/event"]
    ok = config.begin(view("/"))
    config.finish(ok, 302)
    assert [c.path for c in calls.calls] == ["/init", "/event", "/init"]


def test_a_first_visit_to_an_error_page_leaves_the_next_page_a_new_user(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    """A visitor whose first request is a 404 gets no cookie, so the first real page
    makes the user with isNewUser true (a cookie from the 404 would make it false)."""
    config = IntegrationConfig(sdk=sdk)
    missing = config.begin(view("/old-link"))
    assert config.finish(missing, 404) is None
    page = config.begin(view("/"))
    assert config.finish(page, 200) is not None
    assert page.uuid != missing.uuid
    [init] = calls.calls
    assert (init.path, init.body["uuid"], init.body["isNewUser"]) == ("/init", page.uuid, True)
    # A returning visitor on an error page: nothing changes (no /init, no cookie).
    back = config.begin(view("/gone", cookie=f"atrack_uuid={KNOWN}"))
    assert config.finish(back, 404) is None
    # A user the view switched to on an error page keeps the cookie it was given.
    switched = config.begin(view("/login"))
    switched.identify(KNOWN)
    assert config.finish(switched, 401) == (
        f"atrack_uuid={KNOWN}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    )
    assert len(calls.calls) == 1


def test_sync_begin_with_an_async_hook_falls_back(
    sdk: ATrackSdk, calls: CapturedCalls, logs: LogRecorder
) -> None:
    async def identify(request: Any) -> str:
        return "user-1"

    config = IntegrationConfig(sdk=sdk, identify=identify)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        tracker = config.begin(view("/", cookie=f"atrack_uuid={KNOWN}"), object())
    assert tracker.uuid == KNOWN
    assert any("identify hook failed" in m for m in logs.messages())


def test_abegin_with_sync_and_async_hooks(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    import asyncio

    async def ahook(request: Any) -> str:
        return f"async-{request}"

    for identify, expected in ((lambda r: f"sync-{r}", "sync-7"), (ahook, "async-7")):
        config = IntegrationConfig(sdk=sdk, identify=identify)
        tracker = asyncio.run(config.abegin(view("/"), 7))
        assert tracker.uuid == expected
        assert config.set_cookie_header(tracker) is None


def test_passive_trackers_make_no_uuid_until_asked(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    config = IntegrationConfig(sdk=sdk)
    tracker = config.begin(view("/health"))
    assert tracker.passive
    assert tracker._uuid is None
    assert is_canonical_uuid(tracker.uuid)
    tracker.identify(KNOWN)
    assert config.set_cookie_header(tracker) is None
    assert calls.calls == []


def test_tracker_validation_errors_propagate(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    tracker = IntegrationConfig(sdk=sdk).begin(view("/"))
    with pytest.raises(TypeError):
        tracker.track("x", {1: "non-string key"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="NaN"):
        tracker.track("x", {"v": float("nan")})
    with pytest.raises(TypeError):
        tracker.set_attributes({"a": 1}, replace="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uuid"):
        tracker.identify("")


def test_identify_refuses_a_uuid_utf8_cannot_carry_and_keeps_the_user(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # A login view passing on a request body's {"user_id": "\\ud800"}: refused at
    # identify(); the request goes on with its user, whose calls still go out.
    bad = json.loads('"user-\\ud800"')
    config = IntegrationConfig(sdk=sdk)
    tracker = config.begin(view("/login"))
    before = tracker.uuid
    with pytest.raises(ValueError, match=r"uuid 'user-\\ud800' contains a lone surrogate"):
        tracker.identify(bad)
    assert tracker.uuid == before
    tracker.track("login_failed")
    config.finish(tracker, 200)
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [
        ("/init", before),
        ("/event", before),
    ]


def test_a_header_utf8_cannot_carry_does_not_fail_the_views_calls(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # A RequestView from an adapter that decoded header bytes with "surrogateescape":
    # the user agent held a lone surrogate, and the view's track() raised ValueError (a
    # hostile client's header made the host request fail) while the /init was lost.
    config = IntegrationConfig(sdk=sdk)
    tracker = config.begin(view("/", user_agent="Mozilla\udcff/5.0"))
    tracker.track("landing_viewed")
    config.finish(tracker, 200)
    assert [c.path for c in calls.calls] == ["/init", "/event"]
    assert {c.body["context"]["userAgent"] for c in calls.calls} == {"Mozilla/5.0"}


@pytest.mark.parametrize(
    "headers",
    [{"dnt": "1"}, {"dnt": " 1 "}, {"dnt": "1, 1"}, {"dnt": "1,1"}, {"sec_gpc": "1, 1"}],
)
def test_respect_dnt_reads_a_header_sent_twice(
    sdk: ATrackSdk, calls: CapturedCalls, headers: dict[str, str]
) -> None:
    # Sent twice, DNT reaches the view joined ("1, 1"; "1,1" from gunicorn): the
    # visitor who asked twice was tracked.
    config = IntegrationConfig(sdk=sdk, respect_dnt=True)
    tracker = config.begin(view("/", **headers))
    assert tracker.enabled is False
    tracker.track("landing_viewed")
    assert config.finish(tracker, 200) is None
    assert calls.calls == []


def test_respect_dnt_tracks_a_visitor_who_did_not_ask(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    config = IntegrationConfig(sdk=sdk, respect_dnt=True)
    for value in ("0", "0, 0", "10", ""):
        tracker = config.begin(view("/", dnt=value))
        assert tracker.enabled is True, value


def test_set_attributes_replace(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    tracker = IntegrationConfig(sdk=sdk, init="off").begin(view("/"))
    tracker.set_attributes({"plan": "pro"}, replace=True)
    assert calls.attributes[0]["mode"] == "replace"


def test_init_off_identify_with_attributes_sends_attributes(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    tracker = IntegrationConfig(sdk=sdk, init="off").begin(view("/"))
    tracker.identify("user-9", {"plan": "pro"})
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [("/attributes", "user-9")]


def test_lazy_identify_defers_init(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    tracker = IntegrationConfig(sdk=sdk, init="lazy").begin(view("/"))
    tracker.identify("user-9")
    assert calls.calls == []
    tracker.track("clicked")
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [
        ("/init", "user-9"),
        ("/event", "user-9"),
    ]


def test_before_send_cannot_corrupt_the_request_context(calls: CapturedCalls) -> None:
    def scrub(path: str, body: dict[str, Any]) -> dict[str, Any]:
        body["context"].pop("userAgent", None)
        body["context"]["mutated"] = True
        return body

    sdk = ATrackSdk(Options("pub_test_1234", disabled=True, before_send=scrub))
    try:
        tracker = IntegrationConfig(sdk=sdk, init="off").begin(view("/", user_agent="UA"))
        tracker.track("a")
        assert tracker.context == {"url": "/", "ipAddress": "127.0.0.1", "userAgent": "UA"}
    finally:
        sdk.shutdown()


def test_local_init_memory_is_bounded(
    sdk: ATrackSdk, calls: CapturedCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atrack_integrations import _init_dedupe

    monkeypatch.setattr(_init_dedupe, "_LOCAL_SEEN_MAX", 10)
    config = IntegrationConfig(sdk=sdk)
    for _ in range(25):
        config.finish(config.begin(view("/")), 200)
    assert len(config.dedupe._seen) <= 10
    assert len(calls.inits) == 25


def test_public_api_of_the_package() -> None:
    import atrack_integrations

    assert atrack_integrations.__all__ == sorted(atrack_integrations.__all__)
    assert set(atrack_integrations.__all__) == {
        "DEFAULT_EXCLUDE_PATHS",
        "IntegrationConfig",
        "NoRequestError",
        "RequestTracker",
        "current_tracker",
        "resolve_sdk",
        "track",
    }
    for name in atrack_integrations.__all__:
        assert getattr(atrack_integrations, name) is not None


def test_the_identify_hook_is_asked_only_when_its_answer_is_needed(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # Asking it loads the session (Django then adds Vary: Cookie): a page that needs no
    # identity must not ask.
    asked: list[Any] = []

    def identify(request: Any) -> str:
        asked.append(request)
        return "user-7"

    cookie = f"atrack_uuid={KNOWN}"
    lazy = IntegrationConfig(sdk=sdk, identify=identify, init="lazy")
    quiet = lazy.begin(view("/", cookie=cookie), "req-1")
    assert lazy.finish(quiet, 200) is None
    assert asked == []  # lazy, nothing tracked
    busy = lazy.begin(view("/", cookie=cookie), "req-2")
    busy.track("e")
    assert asked == ["req-2"]
    assert busy.uuid == "user-7"
    lazy.finish(busy, 200)
    assert asked == ["req-2"]  # once per request

    eager = IntegrationConfig(sdk=sdk, identify=identify)
    missing = eager.begin(view("/nope", cookie=cookie), "req-3")
    eager.finish(missing, 404)
    assert asked == ["req-2"]  # an error page that tracked nothing
    switched = eager.begin(view("/login", cookie=cookie), "req-4")
    switched.identify("user-8")
    eager.finish(switched, 302)
    assert asked == ["req-2"]  # the view named the user itself
    page = eager.begin(view("/", cookie=cookie), "req-5")
    eager.finish(page, 200)
    assert asked == ["req-2", "req-5"]  # the eager /init needs the user
    assert [(c.path, c.body["uuid"]) for c in calls.calls] == [
        ("/init", "user-7"),
        ("/event", "user-7"),
        ("/init", "user-8"),
    ]


def waiting_second(target: Any, settled: Any) -> PausedThread:
    """A second thread of the request running ``target``; it sets ``settled`` when it
    starts to wait for another thread's step of the tracker (the hook's answer, the
    /init decided)."""
    return PausedThread(
        Condition.wait.__code__,
        target,
        caller=_tracker._wait_for.__code__,
        hold=False,
        reached=settled,
    )


def test_a_thread_that_needs_the_uuid_while_the_hook_is_asked_waits_for_its_answer(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # A view may hand its tracker to threads (the hook then still gets the request). The
    # first call asks the identify hook; a call from another thread meanwhile must wait
    # for its answer: it once went on with the cookie's anonymous uuid, its event and
    # the /init went out for that visitor, and the logged-in user got no /init.
    import threading

    second_done = threading.Event()
    # Set when the second thread waits for this answer (with the fix), or went out
    # without it (without).
    settled = threading.Event()
    seconds: list[PausedThread] = []

    def identify(request: Any) -> str:
        # The second thread comes in while the hook is being asked.
        seconds.append(waiting_second(track_second, settled))
        assert settled.wait(WAIT)
        return "user-7"

    def track_second() -> None:
        tracker.track("second")
        second_done.set()
        settled.set()

    config = IntegrationConfig(sdk=sdk, identify=identify, init="lazy")
    tracker = config.begin(view("/", cookie=f"atrack_uuid={KNOWN}"), "req")
    tracker.track("first")
    [second] = seconds
    second.resume()
    assert second.errors == []
    assert second_done.is_set()
    assert sorted((c.path, c.body["uuid"], c.body.get("event")) for c in calls.calls) == [
        ("/event", "user-7", "first"),
        ("/event", "user-7", "second"),
        ("/init", "user-7", None),
    ]


def test_a_thread_that_tracks_while_the_init_is_decided_waits_for_the_init(
    calls: CapturedCalls,
) -> None:
    # SPEC: a user's /init reaches the API before any other call of that user. The first
    # call of a request decides the /init (a storage round trip, Redis in production); a
    # call from another thread meanwhile must wait for it: it once went out first.
    import threading

    second_done = threading.Event()
    # Set when the second thread waits for the /init (with the fix), or went out first
    # (without).
    settled = threading.Event()
    seconds: list[PausedThread] = []

    class SlowStorage(MemoryStorage):
        def add(self, key: str, value: str, ttl: float | None = None) -> bool:
            # The second thread comes in while the storage answers.
            seconds.append(waiting_second(track_second, settled))
            assert settled.wait(WAIT)
            return super().add(key, value, ttl)

    def track_second() -> None:
        tracker.track("second")
        second_done.set()
        settled.set()

    sdk = ATrackSdk(Options("pub_test_1234", disabled=True, storage=SlowStorage()))
    try:
        config = IntegrationConfig(sdk=sdk, init="lazy")
        tracker = config.begin(view("/", cookie=f"atrack_uuid={KNOWN}"))
        tracker.track("first")
        [second] = seconds
        second.resume()
    finally:
        sdk.shutdown()
    assert second.errors == []
    assert second_done.is_set()
    assert calls.calls[0].path == "/init"
    assert sorted((c.path, c.body.get("event")) for c in calls.calls) == [
        ("/event", "first"),
        ("/event", "second"),
        ("/init", None),
    ]


def test_a_hook_that_uses_the_tracker_is_asked_once(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # The hook runs while its answer is awaited: a call it makes on the tracker goes on
    # with the uuid as it stands (it neither waits for itself nor asks again).
    asked: list[str] = []

    def identify(request: Any) -> str:
        asked.append(request)
        tracker.track("from_hook")
        return "user-7"

    config = IntegrationConfig(sdk=sdk, identify=identify, init="lazy")
    tracker = config.begin(view("/", cookie=f"atrack_uuid={KNOWN}"), "req")
    tracker.track("from_view")
    assert asked == ["req"]
    assert [(e["event"], e["uuid"]) for e in calls.events] == [
        ("from_hook", KNOWN),
        ("from_view", "user-7"),
    ]


def test_each_storage_failure_on_add_names_the_user_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A failing add is sent as added (a duplicate /init rather than a lost user): each
    # one is a DEBUG line naming the key, so such a duplicate can be traced to it; the
    # WARNING stays once a minute.
    class FailingAdd(MemoryStorage):
        def add(self, key: str, value: str, ttl: float | None = None) -> bool:
            raise ConnectionError("down")

    caplog.set_level(logging.DEBUG, "atrack")
    sdk = ATrackSdk(Options("pub_test_1234", disabled=True, storage=FailingAdd()))
    try:
        config = IntegrationConfig(sdk=sdk, init="lazy")
        for uuid in (KNOWN, "0b5a4e5e-7c1d-4c61-9a52-3a2f3f1d9c10"):
            config.begin(view("/", cookie=f"atrack_uuid={uuid}")).track("e")
    finally:
        sdk.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [m for m in lines if m.startswith("A-Track storage add ")] == [
        f"A-Track storage add init:{uuid} failed (ConnectionError('down')): treated as a "
        "miss, /init sent"
        for uuid in (KNOWN, "0b5a4e5e-7c1d-4c61-9a52-3a2f3f1d9c10")
    ]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage()[:40] for r in warnings] == ["A-Track storage failed on add (init dedu"]
