"""The Flask extension: test client, app factory, double registration, a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from atrack_core import ATrackSdk, Options  # noqa: E402
from atrack_core.testing import CapturedCalls  # noqa: E402
from atrack_integrations import RequestTracker  # noqa: E402
from atrack_integrations.flask import ATrack  # noqa: E402
from atrack_integrations.wsgi import ATrackWSGIMiddleware  # noqa: E402
from tests.fake_api import FakeApi, blackhole_url, closed_port_url  # noqa: E402
from tests.integrations.test_wsgi_servers import (  # noqa: E402
    atrack_log_guard,  # noqa: F401
    check_isolation,
    serve,
)

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=closed_port_url()))
    yield sdk
    sdk.shutdown(timeout=0.5)


def add_views(app: Any) -> None:
    from flask import g, jsonify, request

    @app.get("/")
    def landing() -> Any:
        request.atrack.track("landing_viewed", {"source": request.args.get("source")})
        return jsonify(uuid=request.atrack.uuid, same=g.atrack is request.atrack)

    @app.get("/health")
    def health() -> Any:
        return "ok"

    @app.post("/login")
    def login() -> Any:
        request.atrack.identify(request.args.get("as", "user-42"), {"plan": "pro"})
        return jsonify(uuid=request.atrack.uuid)

    @app.get("/boom")
    def boom() -> Any:
        raise ValueError("boom from the view")

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return app.response_class(chunks())


@pytest.fixture
def app(sdk: ATrackSdk) -> Any:
    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    add_views(app)
    return app


def get_cookie(client: Any, name: str = "atrack_uuid") -> Any:
    return client.get_cookie(name)


def test_new_visitor_gets_cookie_and_init(app: Any, calls: CapturedCalls) -> None:
    client = app.test_client()
    resp = client.get("/?source=google", headers={"User-Agent": UA})
    assert resp.status_code == 200
    uuid = resp.json["uuid"]
    assert resp.json["same"] is True
    set_cookie = resp.headers.getlist("Set-Cookie")
    assert len(set_cookie) == 1
    assert set_cookie[0].startswith(f"atrack_uuid={uuid};")
    assert "HttpOnly" in set_cookie[0]
    assert "SameSite=Lax" in set_cookie[0]
    (init,) = calls.inits
    assert init["uuid"] == uuid
    assert init["isNewUser"] is True
    assert init["context"]["url"] == "/?source=google"
    (event,) = calls.events
    assert event["event"] == "landing_viewed"
    assert event["attributes"] == {"source": "google"}
    assert event["context"]["userAgent"] == UA


def test_cookie_round_trip_one_init_per_session(app: Any, calls: CapturedCalls) -> None:
    client = app.test_client()
    uuid = client.get("/").json["uuid"]
    for _ in range(3):
        resp = client.get("/")
        assert resp.json["uuid"] == uuid
        assert resp.headers.getlist("Set-Cookie") == []
    assert len(calls.inits) == 1
    assert {e["uuid"] for e in calls.events} == {uuid}


def test_forged_x_forwarded_for_is_ignored(app: Any, calls: CapturedCalls) -> None:
    client = app.test_client()
    client.get(
        "/", headers={"X-Forwarded-For": "1.2.3.4"}, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert calls.events[0]["context"]["ipAddress"] == "203.0.113.9"


def test_excluded_path_has_tracker_but_no_init(app: Any, calls: CapturedCalls) -> None:
    resp = app.test_client().get("/health")
    assert resp.status_code == 200
    assert resp.headers.getlist("Set-Cookie") == []
    assert calls.inits == []


def test_login_switches_user_and_sets_cookie(app: Any, calls: CapturedCalls) -> None:
    client = app.test_client()
    client.get("/")
    known = "3f1c3a52-8f4b-4c1e-9a55-0c7a9d1b2e11"
    resp = client.post(f"/login?as={known}")
    assert resp.json["uuid"] == known
    assert get_cookie(client).value == known
    # Ids that are not canonical UUIDs are never written to the cookie.
    resp = client.post("/login?as=user-42")
    assert resp.json["uuid"] == "user-42"
    assert resp.headers.getlist("Set-Cookie") == []
    assert get_cookie(client).value == known


def test_view_exceptions_propagate_unchanged(app: Any, calls: CapturedCalls) -> None:
    app.testing = True  # PROPAGATE_EXCEPTIONS: the test client re-raises
    with pytest.raises(ValueError, match="boom from the view"):
        app.test_client().get("/boom")


def test_an_error_page_that_tracked_nothing_makes_no_user(app: Any, calls: CapturedCalls) -> None:
    # A new visitor's failed request: no /init and no cookie (the next page makes the
    # user, as a new one).
    resp = app.test_client().get("/boom")
    assert resp.status_code == 500
    assert resp.headers.getlist("Set-Cookie") == []
    assert calls.calls == []


def test_streaming_response_is_not_buffered(app: Any, calls: CapturedCalls) -> None:
    resp = app.test_client().get("/stream", buffered=False)
    assert resp.is_streamed
    assert b"".join(resp.response) == b"ab"
    resp.close()


def test_config_keys_and_identify_hook(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = flask.Flask(__name__)
    app.config["ATRACK_COOKIE_NAME"] = "visitor"
    app.config["ATRACK_IDENTIFY"] = lambda request: request.headers.get("X-User")
    ATrack(app, sdk=sdk)
    add_views(app)
    client = app.test_client()
    assert client.get("/", headers={"X-User": "u-7"}).json["uuid"] == "u-7"
    resp = client.get("/")
    assert resp.headers["Set-Cookie"].startswith("visitor=")
    assert app.config["ATRACK_INIT"] == "eager"  # defaults are visible in app.config


def test_allow_insecure_http_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ATRACK_ALLOW_INSECURE_HTTP", "ATRACK_ENDPOINT", "ATRACK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    app = flask.Flask(__name__)
    app.config.update(
        ATRACK_PUBLIC_KEY="pub_test_key_1234", ATRACK_ENDPOINT="http://collector:8787"
    )
    with pytest.raises(ValueError, match="ATRACK_ALLOW_INSECURE_HTTP"):
        ATrack(app)
    app = flask.Flask(__name__)
    app.config.update(
        ATRACK_PUBLIC_KEY="pub_test_key_1234",
        ATRACK_ENDPOINT="http://collector:8787",
        ATRACK_ALLOW_INSECURE_HTTP=True,
    )
    ATrack(app)
    sdk = app.extensions["atrack"].sdk
    try:
        assert sdk.base_url == "http://collector:8787"
    finally:
        sdk.shutdown()


def test_factory_pattern_with_init_app(
    calls: CapturedCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATRACK_PUBLIC_KEY", "pub_env_key_5678")
    monkeypatch.setenv("ATRACK_ENDPOINT", closed_port_url())
    atrack = ATrack()

    def create_app(**config: Any) -> Any:
        app = flask.Flask(__name__)
        app.config.update(config)
        atrack.init_app(app)
        add_views(app)
        return app

    one = create_app()
    two = create_app(ATRACK_COOKIE_NAME="second")
    try:
        assert one.extensions["atrack"].sdk is not two.extensions["atrack"].sdk
        assert one.test_client().get("/").headers["Set-Cookie"].startswith("atrack_uuid=")
        assert two.test_client().get("/").headers["Set-Cookie"].startswith("second=")
        assert len(calls.inits) == 2
    finally:
        one.extensions["atrack"].sdk.shutdown(timeout=0.5)
        two.extensions["atrack"].sdk.shutdown(timeout=0.5)


def test_double_registration_is_an_error(app: Any, sdk: ATrackSdk) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        ATrack(app, sdk=sdk)


def test_extension_plus_wsgi_middleware_do_the_work_once(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    add_views(app)
    app.wsgi_app = ATrackWSGIMiddleware(app.wsgi_app, sdk=sdk)  # type: ignore[method-assign]
    resp = app.test_client().get("/")
    assert len(resp.headers.getlist("Set-Cookie")) == 1
    assert len(calls.inits) == 1
    assert calls.events[0]["uuid"] == resp.json["uuid"]


def test_sdk_reachable_from_extensions(app: Any, sdk: ATrackSdk) -> None:
    assert app.extensions["atrack"].sdk is sdk


def test_api_hanging_does_not_slow_requests() -> None:
    # An API that accepts connections and never answers, and a 30 s timeout: a request
    # that waited on it even once would take 30 s; the bound per request is 5 s, far
    # from a request's real cost too, so a loaded machine does not make it flaky.
    with blackhole_url() as url:
        sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=url, timeout=30))
        app = flask.Flask(__name__)
        ATrack(app, sdk=sdk)
        add_views(app)
        client = app.test_client()
        slowest = 0.0
        try:
            for _ in range(30):
                started = time.perf_counter()
                assert client.get("/").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
            assert sdk.stats()["enqueued"] >= 30
        finally:
            sdk.shutdown(timeout=0.2)
    assert slowest < 5.0, slowest


@pytest.mark.slow
def test_under_gunicorn_threads_each_see_their_own_user(fake_api: FakeApi) -> None:
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    with serve("gunicorn", "tests.integrations.test_flask:create_app()", env) as port:
        check_isolation(port, fake_api, "/slow")


def create_app() -> Any:
    """The app gunicorn serves (``module:create_app()``): configured from ``ATRACK_*``
    environment variables through ``Options.from_env()``."""
    import threading

    from flask import jsonify, request

    app = flask.Flask(__name__)
    ATrack(app)

    @app.get("/health")
    def health() -> Any:
        return "ok"

    @app.get("/slow")
    def slow() -> Any:
        threading.Event().wait(0.005)  # interleave the threads
        request.atrack.track("slow_event", {"tag": request.args["tag"]})
        return jsonify(uuid=request.atrack.uuid)

    return app


def test_extension_failure_is_contained(
    sdk: ATrackSdk,
    calls: CapturedCalls,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    import atrack_integrations.flask as ext

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("adapter exploded")

    request.getfixturevalue("atrack_log_guard").expect_errors()
    monkeypatch.setattr(ext, "view_from_environ", broken)
    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    add_views(app)
    resp = app.test_client().get("/health")
    assert resp.status_code == 200
    assert resp.headers.getlist("Set-Cookie") == []
    assert calls.inits == []


def test_flask_module_imports_no_django() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, atrack_integrations.flask; print('django' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "False", result.stderr


def test_missing_flask_names_the_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['flask'] = None\n"
        "try:\n    import atrack_integrations.flask\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "pip install 'a-track-sdk[flask]'" in result.stdout, result.stderr


def test_get_tracker(app: Any, calls: CapturedCalls) -> None:
    from atrack_integrations.flask import get_tracker

    @app.get("/typed")
    def typed() -> Any:
        return {"uuid": get_tracker().uuid}

    assert app.test_client().get("/typed").json["uuid"]
    bare = flask.Flask(__name__)

    @bare.get("/typed")
    def untracked() -> Any:
        return {"uuid": get_tracker().uuid}

    bare.testing = True
    with pytest.raises(RuntimeError, match="ATrack"):
        bare.test_client().get("/typed")


def test_public_api() -> None:
    import atrack_integrations.flask as module

    assert module.__all__ == ["ATrack", "ATrackState", "get_tracker"]
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_identify_hook_gets_the_flask_request_only_when_needed_and_the_cookie_is_set(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # The tracker starts at the WSGI level; the hook gets Flask's request (bound in
    # before_request), and only when the uuid is needed. The cookie is added on the way
    # out, also after a switch in the view.
    app = flask.Flask(__name__)
    seen: list[Any] = []

    def identify(req: Any) -> None:
        seen.append(req)
        return None

    ATrack(app, sdk=sdk, identify=identify)
    add_views(app)
    client = app.test_client()
    known = "9b2f8c1e-4d3a-4f5b-8c6d-7e8f9a0b1c2d"
    resp = client.post(f"/login?as={known}")
    assert resp.json["uuid"] == known
    assert resp.headers.getlist("Set-Cookie")[0].startswith(f"atrack_uuid={known};")
    assert seen == []  # the view named the user: the hook was not needed
    resp = client.get("/?source=ads")
    assert resp.json["uuid"] == known
    assert len(seen) == 1
    assert isinstance(seen[0], flask.Request)
    assert [e["uuid"] for e in calls.events] == [known]


def test_request_dispatched_without_wsgi_app_still_gets_a_tracker(
    app: Any, calls: CapturedCalls
) -> None:
    from flask import g, request

    with app.test_request_context("/", headers={"Cookie": "atrack_uuid=x"}):
        app.preprocess_request()
        assert isinstance(request.atrack, RequestTracker)
        assert g.atrack is request.atrack
        assert request.atrack.is_new_user


def test_wsgi_wrappers_added_after_the_extension_keep_it_working(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    add_views(app)
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    resp = app.test_client().get("/")
    assert len(resp.headers.getlist("Set-Cookie")) == 1
    assert calls.events[0]["uuid"] == resp.json["uuid"]


def test_the_apps_own_hooks_and_routing_errors_see_the_tracker(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # The extension's before_request function runs first: before the app's own
    # (registered before or after init_app) and a blueprint's; a routing error (404, 405)
    # still goes through before_request, and its error handler sees the tracker and the
    # response gets the cookie.
    from flask import Blueprint, jsonify, request

    app = flask.Flask(__name__)
    seen: list[str] = []

    @app.before_request
    def registered_before() -> None:
        seen.append("before init_app: " + request.atrack.uuid)

    ATrack(app, sdk=sdk)

    @app.before_request
    def registered_after() -> None:
        seen.append("after init_app: " + request.atrack.uuid)

    shop = Blueprint("shop", __name__)

    @shop.before_request
    def blueprint_hook() -> None:
        seen.append("blueprint: " + request.atrack.uuid)

    @shop.get("/items")
    def items() -> Any:
        return jsonify(uuid=request.atrack.uuid)

    app.register_blueprint(shop, url_prefix="/shop")

    @app.post("/only-post")
    def only_post() -> Any:
        return "ok"

    @app.errorhandler(404)
    @app.errorhandler(405)
    def routing_error(error: Any) -> Any:
        return jsonify(missing=request.atrack.uuid), error.code

    client = app.test_client()
    resp = client.get("/shop/items")
    uuid = resp.json["uuid"]
    assert seen == [f"before init_app: {uuid}", f"after init_app: {uuid}", f"blueprint: {uuid}"]
    assert get_cookie(client).value == uuid
    for path, status in (("/nowhere", 404), ("/only-post", 405)):
        seen.clear()
        resp = client.get(path)
        assert resp.status_code == status
        assert resp.json == {"missing": uuid}
        assert seen == [f"before init_app: {uuid}", f"after init_app: {uuid}"]
    # A new visitor's 404: the handler sees a tracker, but no user is made (no cookie).
    fresh = app.test_client().get("/nowhere")
    assert fresh.status_code == 404
    assert fresh.json["missing"] not in (None, uuid)
    assert fresh.headers.getlist("Set-Cookie") == []


class FinalRequest(flask.Request):
    """A request class that refuses subclasses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("FinalRequest cannot be subclassed")


def add_g_view(app: Any) -> None:
    from flask import g, jsonify, request

    @app.get("/g")
    def g_report() -> Any:
        return jsonify(
            uuid=request.atrack.uuid,
            same=g.atrack is request.atrack,
            get=g.get("atrack") is request.atrack,
            contains="atrack" in g,
            other=g.get("other", 5),
            other_in="other" in g,
        )


G_REPORT = {"same": True, "get": True, "contains": True, "other": 5, "other_in": False}
KNOWN = ("9b2f8c1e-4d3a-4f5b-8c6d-7e8f9a0b1c2d", "0c5e8a1f-2b3d-4e6f-9a7b-8c1d2e3f4a5b")


def test_after_the_first_request_no_function_of_ours_runs_per_request(
    app: Any, calls: CapturedCalls
) -> None:
    # request.atrack and g.atrack are attributes of subclasses of the app's classes,
    # made at the first WSGI call; the first-request function (for requests dispatched
    # without app.wsgi_app) and the first-call wrapper go.
    from flask import g

    add_g_view(app)
    assert len(app.before_request_funcs[None]) == 1
    client = app.test_client()
    first = client.get("/g").json
    assert app.before_request_funcs[None] == []
    assert isinstance(app.wsgi_app, ATrackWSGIMiddleware)
    second = client.get("/g").json
    assert first == second == {**G_REPORT, "uuid": first["uuid"]}
    assert issubclass(app.request_class, flask.Request)
    assert issubclass(app.app_ctx_globals_class, flask.ctx._AppCtxGlobals)
    with app.app_context():  # outside a request: g has no atrack, as before
        assert "atrack" not in g
        assert g.get("atrack") is None
        assert not hasattr(g, "atrack")
        g.atrack = "the app's own"
        assert g.atrack == g.get("atrack") == "the app's own"
    assert [i["uuid"] for i in calls.inits] == [first["uuid"]]  # one user, one /init


def test_request_and_g_classes_the_app_sets_after_the_extension_are_kept(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    from flask import g, jsonify, request

    class MyRequest(flask.Request):
        mine = "request"

    class MyGlobals(flask.ctx._AppCtxGlobals):
        mine = "g"

    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    app.request_class = MyRequest
    app.app_ctx_globals_class = MyGlobals

    @app.get("/mine")
    def mine() -> Any:
        return jsonify(
            uuid=request.atrack.uuid,
            same=g.atrack is request.atrack,
            classes=[request.mine, g.mine],
            instance=isinstance(request._get_current_object(), MyRequest),
        )

    client = app.test_client()
    first, second = client.get("/mine").json, client.get("/mine").json
    assert (
        first
        == second
        == {
            "uuid": first["uuid"],
            "same": True,
            "classes": ["request", "g"],
            "instance": True,
        }
    )
    assert app.request_class.__bases__ == (MyRequest,)
    assert app.app_ctx_globals_class.__bases__ == (MyGlobals,)


def test_an_app_context_pushed_around_requests_gives_each_its_own_tracker(
    app: Any, calls: CapturedCalls
) -> None:
    # Flask reuses an app context the caller pushed (and its g, made before the first
    # request) for the requests made inside it.
    add_g_view(app)
    client = app.test_client(use_cookies=False)  # the Cookie header as given
    with app.app_context():
        reports = [
            client.get("/g", headers={"Cookie": f"atrack_uuid={uuid}"}).json for uuid in KNOWN
        ]
    assert reports == [{**G_REPORT, "uuid": uuid} for uuid in KNOWN]


def test_classes_that_cannot_be_subclassed_keep_a_function_per_request(
    sdk: ATrackSdk,
    calls: CapturedCalls,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    request.getfixturevalue("atrack_log_guard").expect_errors()

    app = flask.Flask(__name__)
    app.request_class = FinalRequest
    ATrack(app, sdk=sdk)
    add_g_view(app)
    client = app.test_client(use_cookies=False)  # the Cookie header as given
    reports = [client.get("/g", headers={"Cookie": f"atrack_uuid={uuid}"}).json for uuid in KNOWN]
    assert reports == [{**G_REPORT, "uuid": uuid} for uuid in KNOWN]
    assert len(app.before_request_funcs[None]) == 1
    assert app.request_class is FinalRequest
    failures = [r for r in caplog.records if "could not subclass" in r.getMessage()]
    assert len(failures) == 1  # at the first request; not every request


def test_request_dispatched_without_wsgi_app_after_the_first_request_gets_a_tracker(
    app: Any, calls: CapturedCalls
) -> None:
    from flask import g, request

    add_g_view(app)
    assert app.test_client().get("/g").json["same"]
    with app.test_request_context("/", headers={"Cookie": f"atrack_uuid={KNOWN[0]}"}):
        assert request.atrack.uuid == KNOWN[0]
        assert g.atrack is request.atrack


def test_concurrent_first_requests_all_see_the_tracker_with_classes_set_after_init_app(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # The classes are made at the first WSGI call, before Flask makes any request from
    # the app's classes: a second request, built while the first is still on its way
    # to its view, gets them too.
    import threading

    from flask import request

    class MyRequest(flask.Request):
        pass

    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    app.request_class = MyRequest
    first_in_view, second_built = threading.Event(), threading.Event()

    @app.url_value_preprocessor
    def hold(endpoint: Any, values: Any) -> None:
        if request.path == "/second":
            second_built.set()
            assert first_in_view.wait(10)
        elif request.path == "/first":
            assert second_built.wait(10)

    @app.get("/<name>")
    def view(name: str) -> Any:
        if name == "first":
            first_in_view.set()
        return {
            "uuid": request.atrack.uuid,
            "mine": isinstance(request._get_current_object(), MyRequest),
        }

    results: dict[str, Any] = {}

    def get(path: str) -> None:
        results[path] = app.test_client().get(path)

    threads = [threading.Thread(target=get, args=(path,)) for path in ("/first", "/second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert [results[p].status_code for p in ("/first", "/second")] == [200, 200]
    assert all(results[p].json["mine"] for p in ("/first", "/second"))


def test_a_first_call_arriving_while_the_classes_are_made_waits_for_them(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # gunicorn gthread: a second request's first call comes while the first call is
    # still making the classes. It must wait for them: CI once saw it go on, build its
    # request from the old class and reach its view after the first-request function
    # had gone (no request.atrack, a 500).
    import threading

    from flask import request

    results: dict[str, Any] = {}
    second_built, first_in_view = threading.Event(), threading.Event()
    app = flask.Flask(__name__)

    def get(path: str) -> None:
        results[path] = app.test_client().get(path)

    second = threading.Thread(target=get, args=("/second",))

    class MyRequest(flask.Request):
        def __init_subclass__(cls, **kwargs: Any) -> None:
            # The extension subclasses the app's request class at the first call: the
            # second request comes in now and must not get as far as its own request
            # before the classes are in place (given a second to do so wrongly).
            super().__init_subclass__(**kwargs)
            second.start()
            second_built.wait(1)

    app.request_class = MyRequest
    ATrack(app, sdk=sdk)

    @app.url_value_preprocessor
    def hold(endpoint: Any, values: Any) -> None:
        if request.path == "/second":
            second_built.set()
            assert first_in_view.wait(10)

    @app.get("/<name>")
    def view(name: str) -> Any:
        if name == "first":
            first_in_view.set()
        return {"uuid": request.atrack.uuid}

    get("/first")
    second.join(20)
    assert [results[p].status_code for p in ("/first", "/second")] == [200, 200]
    assert results["/first"].json["uuid"] != results["/second"].json["uuid"]


def test_identify_hook_gets_its_own_request_from_a_thread(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # With an identify hook the request is bound to the tracker per request: a tracker
    # handed to a thread (no Flask context there) still asks the hook with it.
    import threading

    from flask import request

    user = "5d9c2a7e-1b3f-4c8d-9e0a-6f4b2c1d3e5a"
    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk, identify=lambda req: req.headers.get("X-User"))

    @app.post("/order")
    def order() -> Any:
        tracker = request.atrack
        thread = threading.Thread(target=tracker.track, args=("order_created",))
        thread.start()
        thread.join()
        return {"uuid": tracker.uuid}

    client = app.test_client(use_cookies=False)
    resp = client.post("/order", headers={"X-User": user, "Cookie": f"atrack_uuid={KNOWN[0]}"})
    assert resp.json["uuid"] == user
    assert [e["uuid"] for e in calls.events] == [user]


def test_g_atrack_in_teardown_appcontext(app: Any, calls: CapturedCalls) -> None:
    # Flask pops the request context before it tears the app context down.
    from flask import g

    seen: list[Any] = []

    @app.teardown_appcontext
    def teardown(exc: Any) -> None:
        seen.append((g.get("atrack"), getattr(g, "atrack", None)))

    client = app.test_client(use_cookies=False)
    for uuid in KNOWN:
        client.get("/health", headers={"Cookie": f"atrack_uuid={uuid}"})
    assert [(a.uuid, b.uuid) for a, b in seen] == [(uuid, uuid) for uuid in KNOWN]


def test_a_g_of_another_class_pushed_before_the_first_request_is_attached_per_request(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    # An app context pushed before the app changed its g class holds a g the subclass
    # cannot adopt: the tracker is then attached on every request, never stale.
    class MyGlobals(flask.ctx._AppCtxGlobals):
        pass

    app = flask.Flask(__name__)
    ATrack(app, sdk=sdk)
    add_g_view(app)
    client = app.test_client(use_cookies=False)
    with app.app_context():
        app.app_ctx_globals_class = MyGlobals
        reports = [
            client.get("/g", headers={"Cookie": f"atrack_uuid={uuid}"}).json for uuid in KNOWN
        ]
    assert reports == [{**G_REPORT, "uuid": uuid} for uuid in KNOWN]
    assert len(app.before_request_funcs[None]) == 1


def test_two_apps_with_one_request_class_keep_their_own_sdks(calls: CapturedCalls) -> None:
    from flask import request

    sdks = [
        ATrackSdk(Options(f"pub_test_key_{n}{n}{n}{n}", endpoint=closed_port_url())) for n in (1, 2)
    ]
    apps = [flask.Flask(__name__) for _ in sdks]
    for app, one_sdk in zip(apps, sdks, strict=True):
        ATrack(app, sdk=one_sdk)

        @app.get("/t")
        def tracked() -> Any:
            request.atrack.track("hit")
            return "ok"

    apps[0].test_client().get("/t")
    apps[1].request_class = apps[0].request_class  # made by A-Track for the first app
    with apps[1].test_request_context("/t"):
        apps[1].full_dispatch_request()
    keys = [call.headers["x-a-track-key"] for call in calls.calls if call.path == "/event"]
    for one_sdk in sdks:
        one_sdk.shutdown(timeout=0.5)
    assert keys == ["pub_test_key_1111", "pub_test_key_2222"]


def test_classes_that_cannot_be_subclassed_first_dispatched_without_wsgi_app(
    sdk: ATrackSdk, calls: CapturedCalls, request: pytest.FixtureRequest
) -> None:
    # The first request, dispatched without app.wsgi_app, finds the classes cannot be
    # subclassed: that request is attached too, not only the later ones.
    from flask import g
    from flask import request as flask_request

    request.getfixturevalue("atrack_log_guard").expect_errors()

    app = flask.Flask(__name__)
    app.request_class = FinalRequest
    ATrack(app, sdk=sdk)
    for uuid in KNOWN:
        with app.test_request_context("/", headers={"Cookie": f"atrack_uuid={uuid}"}):
            app.preprocess_request()
            assert flask_request.atrack.uuid == uuid
            assert g.atrack is flask_request.atrack
