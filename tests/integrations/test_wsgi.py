"""The plain WSGI middleware, called in-process with hand-built environs."""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atrack_core import ATrackSdk, Options
from atrack_core._request import ContextConfig, build_request_context
from atrack_core.testing import CapturedCalls
from atrack_integrations._lifecycle import IntegrationConfig
from atrack_integrations._wsgi_common import header_keys, view_from_environ
from atrack_integrations.wsgi import ATrackWSGIMiddleware
from tests.fake_api import blackhole_url, closed_port_url
from tests.integrations.test_wsgi_servers import LogGuard, atrack_log_guard  # noqa: F401

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    # Nothing reaches the network: tests capture calls; the port is closed anyway.
    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=closed_port_url()))
    yield sdk
    sdk.shutdown(timeout=0.5)


def environ_for(
    path: str = "/",
    *,
    query: str = "",
    method: str = "GET",
    cookie: str | None = None,
    remote: str = "203.0.113.7",
    scheme: str = "http",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "shop.example",
        "SERVER_PORT": "443" if scheme == "https" else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote,
        "HTTP_HOST": "shop.example",
        "HTTP_USER_AGENT": UA,
        "HTTP_ACCEPT_LANGUAGE": "de-de,en;q=0.5",
        "wsgi.url_scheme": scheme,
    }
    if cookie is not None:
        env["HTTP_COOKIE"] = cookie
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


class Response:
    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.calls = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        self.status = status
        self.headers = headers
        self.calls += 1
        return lambda data: None

    def cookie(self, name: str = "atrack_uuid") -> Any:
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                if name in jar:
                    return jar[name]
        return None

    def set_cookie_headers(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]


def run(app: Any, environ: dict[str, Any]) -> tuple[Response, bytes]:
    resp = Response()
    result = app(environ, resp.start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return resp, body


def tracking_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    tracker = environ["atrack.tracker"]
    tracker.track("viewed", {"path": environ["PATH_INFO"]})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [tracker.uuid.encode()]


# --------------------------------------------------------------------------- lifecycle


def test_new_visitor_gets_a_cookie_and_one_init(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    resp, body = run(app, environ_for("/pricing", query="source=google"))
    morsel = resp.cookie()
    assert morsel is not None
    assert str(uuidlib.UUID(morsel.value)) == morsel.value == body.decode()
    assert morsel["path"] == "/"
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert int(morsel["max-age"]) == 365 * 24 * 3600
    assert not morsel["secure"]
    assert [b["uuid"] for b in calls.inits] == [morsel.value]
    assert calls.inits[0]["isNewUser"] is True
    assert calls.inits[0]["context"]["url"] == "/pricing?source=google"


def test_cookie_round_trip_sends_one_init_per_session(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    first, _ = run(app, environ_for("/"))
    uuid = first.cookie().value
    for _ in range(3):
        resp, body = run(app, environ_for("/cart", cookie=f"other=1; atrack_uuid={uuid}"))
        assert body.decode() == uuid
        assert resp.set_cookie_headers() == []
    assert len(calls.inits) == 1
    assert [e["uuid"] for e in calls.events] == [uuid] * 4


def test_repeated_cookie_headers_joined_with_commas(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # gunicorn joins repeated headers with ","; the uuid cookie is still found.
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    uuid = run(app, environ_for("/"))[0].cookie().value
    resp, body = run(app, environ_for("/", cookie=f"a=1,atrack_uuid={uuid},atrack_tz=UTC"))
    assert body.decode() == uuid
    assert resp.set_cookie_headers() == []
    assert calls.events[-1]["context"]["timezone"] == "UTC"


def test_secure_cookie_on_https(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    resp, _ = run(app, environ_for("/", scheme="https"))
    assert resp.cookie()["secure"] is True


def test_forged_cookie_is_replaced(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    resp, body = run(app, environ_for("/", cookie="atrack_uuid=../../etc/passwd"))
    assert resp.cookie() is not None
    assert body.decode() == resp.cookie().value != "../../etc/passwd"


def test_events_carry_the_request_context(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    run(
        app,
        environ_for(
            "/login",
            query="next=%2Fcart&token=abc",
            headers={"Referer": "https://google.com/?q=shoes", "X-Timezone": "Europe/Berlin"},
        ),
    )
    (event,) = calls.events
    assert event["event"] == "viewed"
    assert event["context"] == {
        "url": "/login?next=%2Fcart&token=[Filtered]",
        "referer": "https://google.com/?q=shoes",
        "ipAddress": "203.0.113.7",
        "userAgent": UA,
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
    }


def test_raw_uri_is_preferred_and_decoded_paths_are_re_escaped(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    env = environ_for("/a b/ü")
    # PEP 3333: PATH_INFO carries the raw bytes as latin-1 characters.
    env["PATH_INFO"] = "/a b/ü?".encode().decode("latin-1")
    run(app, env)
    env = environ_for("/ignored", query="x=1")
    env["RAW_URI"] = "/caf%C3%A9?x=1"
    run(app, env)
    assert [e["context"]["url"] for e in calls.events] == ["/a%20b/%C3%BC%3F", "/caf%C3%A9?x=1"]


def test_forged_x_forwarded_for_is_ignored(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
    run(app, environ_for("/", headers={"X-Forwarded-For": "1.2.3.4"}))
    assert calls.events[0]["context"]["ipAddress"] == "203.0.113.7"


def test_x_forwarded_for_through_a_trusted_proxy(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk, trusted_proxies=["10.0.0.0/8"])
    run(app, environ_for("/", remote="10.1.2.3", headers={"X-Forwarded-For": "1.2.3.4, 10.9.9.9"}))
    assert calls.events[0]["context"]["ipAddress"] == "1.2.3.4"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/health"), ("GET", "/static/app.css"), ("HEAD", "/"), ("OPTIONS", "/")],
)
def test_excluded_requests_do_no_work(
    sdk: ATrackSdk, calls: CapturedCalls, method: str, path: str
) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["atrack.tracker"])
        start_response("200 OK", [])
        return [b""]

    resp, _ = run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for(path, method=method))
    assert seen
    assert seen[0] is not None  # the tracker is still there for view code
    assert resp.set_cookie_headers() == []
    assert calls.inits == []


def test_identify_hook_wins_and_gets_the_environ(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    def identify(environ: dict[str, Any]) -> str | None:
        return environ.get("HTTP_X_USER")

    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk, identify=identify)
    _, body = run(app, environ_for("/", headers={"X-User": "user-42"}))
    assert body == b"user-42"
    assert [b["uuid"] for b in calls.inits] == ["user-42"]


def test_identify_at_login_switches_user_and_sets_cookie(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["atrack.tracker"].identify("3f1c3a52-8f4b-4c1e-9a55-0c7a9d1b2e11", {"plan": "pro"})
        start_response("200 OK", [])
        return [b""]

    first, _ = run(ATrackWSGIMiddleware(tracking_app, sdk=sdk), environ_for("/"))
    resp, _ = run(
        ATrackWSGIMiddleware(app, sdk=sdk),
        environ_for("/login", cookie=f"atrack_uuid={first.cookie().value}"),
    )
    assert resp.cookie().value == "3f1c3a52-8f4b-4c1e-9a55-0c7a9d1b2e11"


def test_the_sdk_current_user_is_never_changed(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    run(ATrackWSGIMiddleware(tracking_app, sdk=sdk), environ_for("/"))
    assert sdk.get_user() is None


def test_respect_dnt(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(tracking_app, sdk=sdk, respect_dnt=True)
    resp, _ = run(app, environ_for("/", headers={"DNT": "1"}))
    assert resp.set_cookie_headers() == []
    assert len(calls) == 0


# --------------------------------------------------------------------------- WSGI contract


class CountingIterable:
    """A response iterable that records how far it was consumed and its close() calls."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.produced = 0
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            self.produced += 1
            yield b"chunk%d" % i

    def close(self) -> None:
        self.closed += 1


def test_streaming_body_is_not_consumed_or_buffered(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    body = CountingIterable(5)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    resp = Response()
    result = ATrackWSGIMiddleware(app, sdk=sdk)(environ_for("/"), resp.start_response)
    assert body.produced == 0
    it = iter(result)
    assert next(it) == b"chunk0"
    assert body.produced == 1  # one chunk out, one chunk made: nothing read ahead
    assert resp.cookie() is not None  # headers went out before the body
    assert list(it) == [b"chunk1", b"chunk2", b"chunk3", b"chunk4"]
    result.close()  # type: ignore[attr-defined]
    assert body.closed == 1


def test_start_response_called_late_from_a_generator(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    # PEP 3333 lets an app call start_response when it yields its first chunk.
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"late"

    resp, body = run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for("/"))
    assert body == b"late"
    assert resp.cookie() is not None


@pytest.mark.parametrize("double", [False, True])
def test_close_is_passed_on_exactly_once(
    sdk: ATrackSdk, calls: CapturedCalls, double: bool
) -> None:
    body = CountingIterable(2)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    wrapped = ATrackWSGIMiddleware(app, sdk=sdk)
    if double:
        wrapped = ATrackWSGIMiddleware(wrapped, sdk=sdk)
    run(wrapped, environ_for("/"))
    assert body.closed == 1


def test_app_exceptions_propagate_unchanged(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    error = ValueError("boom")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(ValueError, match="boom") as info:
        run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for("/"))
    assert info.value is error


def test_exceptions_while_streaming_propagate_unchanged(
    sdk: ATrackSdk, calls: CapturedCalls
) -> None:
    error = RuntimeError("mid-stream")

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise error

    with pytest.raises(RuntimeError) as info:
        run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for("/"))
    assert info.value is error


def test_double_installation_does_the_work_once(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    app = ATrackWSGIMiddleware(ATrackWSGIMiddleware(tracking_app, sdk=sdk), sdk=sdk)
    resp, _ = run(app, environ_for("/"))
    assert len(resp.set_cookie_headers()) == 1
    assert len(calls.inits) == 1


def test_sdk_failure_is_contained(
    sdk: ATrackSdk,
    calls: CapturedCalls,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("storage exploded")

    monkeypatch.setattr(sdk.storage, "add", broken)
    monkeypatch.setattr(sdk.storage, "get", broken)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"fine"]

    with caplog.at_level(logging.WARNING, logger="atrack"):
        resp, body = run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for("/"))
    assert (resp.status, body) == ("200 OK", b"fine")


def test_api_hanging_does_not_slow_requests() -> None:
    # Real delivery (no capture) to an API that accepts connections and never answers,
    # with a 30 s timeout: a request that waited on it even once would take 30 s. The
    # bound per request is far from both that and a request's real cost (microseconds),
    # so a loaded machine does not make it flaky.
    with (
        blackhole_url() as url,
        ATrackSdk(Options("pub_test_key_1234", endpoint=url, timeout=30)) as sdk,
    ):
        app = ATrackWSGIMiddleware(tracking_app, sdk=sdk)
        slowest = 0.0
        for _ in range(50):
            started = time.perf_counter()
            resp, _ = run(app, environ_for("/"))
            slowest = max(slowest, time.perf_counter() - started)
            assert resp.status == "200 OK"
        assert sdk.stats()["enqueued"] >= 50
        sdk.shutdown(timeout=0.2)
    assert slowest < 5.0, slowest


def test_config_from_keywords_is_validated_early(sdk: ATrackSdk) -> None:
    with pytest.raises(ValueError, match="ip"):
        ATrackWSGIMiddleware(tracking_app, sdk=sdk, ip="partial")
    with pytest.raises(TypeError, match="bogus"):
        ATrackWSGIMiddleware(tracking_app, sdk=sdk, bogus=1)


# --------------------------------------------------------------------------- hostile input

_FUZZ_SDK = ATrackSdk(Options("pub_test_key_1234", disabled=True))  # sends nothing
_TEXT = st.text(max_size=300)
# PEP 3333 strings are latin-1; Django under ASGI hands over real text: both.
_WSGI_TEXT = st.one_of(_TEXT, st.binary(max_size=300).map(lambda b: b.decode("latin-1")))


@settings(max_examples=300, deadline=None)
@given(
    path=_WSGI_TEXT,
    raw_uri=st.one_of(st.none(), _WSGI_TEXT),
    query=_WSGI_TEXT,
    cookie=_WSGI_TEXT,
    agent=_WSGI_TEXT,
    language=_WSGI_TEXT,
    remote=_TEXT,
)
def test_any_environ_gives_a_view_and_a_context(
    path: str,
    raw_uri: str | None,
    query: str,
    cookie: str,
    agent: str,
    language: str,
    remote: str,
) -> None:
    config = IntegrationConfig(sdk=_FUZZ_SDK, trusted_proxies=["0.0.0.0/0"], respect_dnt=True)
    env = environ_for("/", remote=remote, cookie=cookie)
    env.update(PATH_INFO=path, QUERY_STRING=query, HTTP_USER_AGENT=agent)
    env.update(HTTP_ACCEPT_LANGUAGE=language, HTTP_X_FORWARDED_FOR=agent, HTTP_DNT=language)
    if raw_uri is not None:
        env["RAW_URI"] = raw_uri
    view = view_from_environ(env, header_keys(config))
    context = build_request_context(view, ContextConfig(trusted_proxies=["0.0.0.0/0"]))
    assert len(context.url or "") <= 2048
    tracker = config.begin(view, env, path=path)
    assert tracker.uuid


def test_get_tracker(sdk: ATrackSdk, calls: CapturedCalls) -> None:
    from atrack_integrations.wsgi import get_tracker

    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(get_tracker(environ))
        start_response("200 OK", [])
        return [b""]

    run(ATrackWSGIMiddleware(app, sdk=sdk), environ_for("/"))
    assert seen[0].uuid
    with pytest.raises(RuntimeError, match="ATrackWSGIMiddleware"):
        get_tracker(environ_for("/"))


def test_public_api() -> None:
    import atrack_integrations.wsgi as module

    assert module.__all__ == [
        "ATrackWSGIMiddleware",
        "StartResponse",
        "WSGIApp",
        "WSGIEnviron",
        "get_tracker",
    ]
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("where", ["HTTP_COOKIE", "HTTP_ACCEPT_LANGUAGE"])
def test_non_ascii_header_values_are_read_by_the_shared_rule(where: str) -> None:
    # PEP 3333 hands header bytes over as latin-1 characters: UTF-8 bytes in any one of
    # the headers read (first or last) are decoded, the others are kept as they are.
    config = IntegrationConfig(sdk=_FUZZ_SDK)
    env = environ_for("/", cookie="atrack_uuid=x")
    env["HTTP_ACCEPT_LANGUAGE"] = "de-DE"
    env[where] += "; ü".encode().decode("latin-1")
    view = view_from_environ(env, header_keys(config))
    name = "cookie" if where == "HTTP_COOKIE" else "accept-language"
    other = "accept-language" if where == "HTTP_COOKIE" else "cookie"
    assert view.headers[name].endswith("; ü")
    assert view.headers[other] == ("de-DE" if other == "accept-language" else "atrack_uuid=x")
