"""One raw request, one context: the same bytes through every adapter under real
servers (uvicorn for Starlette and Django ASGI, gunicorn for plain WSGI, Flask and Django
WSGI) give identical contexts (SPEC section 6: header bytes are decoded the same way
everywhere). Also: ``wsgiref.validate`` on both sides of the WSGI middleware.

The requests are written byte for byte on a socket: UTF-8, Latin-1 and invalid UTF-8 in
the user agent, the referer and the query. A referer and a url naming the same bytes read
the same (a raw ``\xff`` in either is ``%FF``), through the real servers and, for raw
path bytes the servers refuse, through the ASGI and WSGI adapters in-process.
"""

from __future__ import annotations

import http.client
import json
import wsgiref.validate
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_api import FakeApi
from tests.integrations.test_wsgi_servers import serve

pytestmark = pytest.mark.slow

SERVERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("uvicorn", "tests.integrations.test_same_context:starlette_app", ("--factory",)),
    ("uvicorn", "tests.integrations.django.asgi:application", ()),
    ("gunicorn", "tests.integrations.test_same_context:wsgi_app()", ()),
    ("gunicorn", "tests.integrations.test_same_context:flask_app()", ()),
    ("gunicorn", "tests.integrations.django.wsgi:application", ()),
]

# (user agent, referer, query): bytes as a client sends them. uvicorn and gunicorn
# answer 400 to raw non-ASCII bytes in the request target, so queries are sent
# percent-encoded, as browsers do; headers carry raw bytes.
RAW_REQUESTS = [
    (b"Mozilla/5.0 (X11) Firefox/133.0", b"https://google.com/?q=shoes", "source=ads"),
    # UTF-8: must arrive as the text it is, not as mojibake.
    (
        b"M\xc3\xb6zilla/5.0 \xe2\x9c\x93",
        b"https://r\xc3\xa9f.example/caf\xc3\xa9?q=\xc3\xa9t\xc3\xa9",
        "q=caf%C3%A9&token=s%C3%A9cret",
    ),
    # Latin-1 (not valid UTF-8): every byte one character.
    (b"Caf\xe9/1.0 (Latin-1)", b"https://ref.example/\xe9t\xe9", "q=%E9t%E9"),
    # Invalid UTF-8 (a cut sequence, stray continuation bytes).
    (b"Bad\xc3(\xff\xfe/2", b"https://ref.example/\xc3(\x80", "q=%FF&password=%C3("),
    # The page itself as the referer, a raw 0xFF in it: its url and referer must agree.
    (b"Mozilla/5.0 (X11) Firefox/133.0", b"https://shop.test/ctx?q=\xff#top", "q=%FF"),
]


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from atrack_integrations.asgi import ATrackMiddleware

    async def ctx(request: Request) -> JSONResponse:
        return JSONResponse(request.state.atrack.context)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/ctx", ctx), Route("/health", health)])
    app.add_middleware(ATrackMiddleware)
    return app


def _plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    body = json.dumps(environ["atrack.tracker"].context).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def wsgi_app() -> Any:
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    return ATrackWSGIMiddleware(_plain_wsgi)


def flask_app() -> Any:
    import flask

    from atrack_integrations.flask import ATrack

    app = flask.Flask(__name__)
    ATrack(app)

    @app.get("/health")
    def health() -> Any:
        return "ok"

    @app.get("/ctx")
    def ctx() -> Any:
        return flask.jsonify(flask.request.atrack.context)  # type: ignore[attr-defined]

    return app


def raw_get(port: int, target: str, headers: dict[str, bytes]) -> tuple[int, bytes]:
    """A GET whose header values go on the wire as these exact bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_host=True)
        conn.putheader("Host", "shop.test")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def contexts() -> Iterator[dict[tuple[str, str], list[dict[str, Any]]]]:
    """Every server's contexts for RAW_REQUESTS, servers run one after the other."""
    with FakeApi() as api:
        yield _collect(api)


def _collect(api: FakeApi) -> dict[tuple[str, str], list[dict[str, Any]]]:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
        "ATRACK_PUBLIC_KEY": "pub_test_key_1234",
        "ATRACK_ENDPOINT": api.url,
        "ATRACK_INIT": "off",
    }
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for kind, target, args in SERVERS:
        with serve(kind, target, env, args=args) as port:
            found = seen[(kind, target)] = []
            for user_agent, referer, query in RAW_REQUESTS:
                headers = {
                    "User-Agent": user_agent,
                    "Referer": referer,
                    "Accept-Language": b"de-CH,de;q=0.9",
                    "Cookie": b"atrack_tz=Europe%2FZurich",
                }
                status, body = raw_get(port, "/ctx?" + query, headers)
                assert status == 200, (kind, target, body)
                assert body.startswith(b"{"), (kind, target, body)
                found.append(json.loads(body))
    return seen


def test_every_adapter_gives_the_same_context(
    contexts: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    (first, reference), *others = contexts.items()
    for server, found in others:
        for index, (want, got) in enumerate(zip(reference, found, strict=True)):
            assert got == want, f"request {index}: {server} differs from {first}"


def test_the_context_reads_utf8_as_text_and_other_bytes_as_latin1(
    contexts: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    plain, utf8, latin1, invalid, itself = next(iter(contexts.values()))
    assert plain == {
        "url": "/ctx?source=ads",
        "referer": "https://google.com/?q=shoes",
        "ipAddress": "127.0.0.1",
        "userAgent": "Mozilla/5.0 (X11) Firefox/133.0",
        "locale": "de-CH",
        "timezone": "Europe/Zurich",
    }
    assert utf8["userAgent"] == "M\u00f6zilla/5.0 \u2713"
    # URL parts: the bytes as sent, percent-encoded; sensitive values scrubbed.
    assert utf8["url"] == "/ctx?q=caf%C3%A9&token=[Filtered]"
    assert utf8["referer"] == "https://r%C3%A9f.example/caf%C3%A9?q=%C3%A9t%C3%A9"
    assert latin1["userAgent"] == "Caf\u00e9/1.0 (Latin-1)"
    # A URL's bytes that are not UTF-8 stay the bytes sent, as in the url's query
    # (q=%E9t%E9); their Latin-1 text in UTF-8 (%C3%A9) would name another page.
    assert latin1["url"] == "/ctx?q=%E9t%E9"
    assert latin1["referer"] == "https://ref.example/%E9t%E9"
    assert invalid["userAgent"] == "Bad\u00c3(\u00ff\u00fe/2"
    assert invalid["url"] == "/ctx?q=%FF&password=[Filtered]"
    assert invalid["referer"] == "https://ref.example/%C3(%80"
    # The referring page's url, as the page itself logged it (the fragment dropped).
    assert itself["referer"] == "https://shop.test" + itself["url"] == "https://shop.test/ctx?q=%FF"


def test_a_raw_path_byte_and_the_same_byte_in_the_referer_read_the_same() -> None:
    # uvicorn and gunicorn answer 400 to a raw 0xFF in the request target (checked
    # there); other servers may pass it on, as the scope's raw_path or PEP 3333's Latin-1
    # PATH_INFO. Both adapters in-process, the same request, the referer its own URL.
    import asyncio

    from atrack_core import ATrackSdk, Options
    from atrack_integrations.asgi import ATrackMiddleware, Receive, Scope, Send
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    path, query, referer = b"/caf\xff", b"q=\xff", b"https://shop.test/caf\xff?q=\xff"
    seen: dict[str, dict[str, Any]] = {}

    async def asgi_view(scope: Scope, receive: Receive, send: Send) -> None:
        seen["asgi"] = scope["state"]["atrack"].context
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def wsgi_view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["wsgi"] = environ["atrack.tracker"].context
        start_response("200 OK", [])
        return [b""]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    sdk = ATrackSdk(Options("pub_test_key_1234", disabled=True))
    try:
        scope = {
            "type": "http", "method": "GET", "scheme": "http", "path": path.decode("latin-1"),
            "raw_path": path, "query_string": query, "client": ("127.0.0.1", 5),
            "headers": [(b"host", b"shop.test"), (b"referer", referer)],
        }  # fmt: skip
        asyncio.run(ATrackMiddleware(asgi_view, sdk=sdk, init="off")(scope, receive, send))
        environ = {
            "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http", "SCRIPT_NAME": "",
            "PATH_INFO": path.decode("latin-1"), "QUERY_STRING": query.decode("latin-1"),
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "shop.test",
            "HTTP_REFERER": referer.decode("latin-1"),  # PEP 3333
        }  # fmt: skip
        ATrackWSGIMiddleware(wsgi_view, sdk=sdk, init="off")(environ, lambda *a: None)
    finally:
        sdk.shutdown()
    assert seen["asgi"] == seen["wsgi"]
    assert seen["asgi"]["url"] == "/caf%FF?q=%FF"
    assert seen["asgi"]["referer"] == "https://shop.test/caf%FF?q=%FF"


# ------------------------------------------------------------------ wsgiref.validate


def test_wsgiref_validate_on_both_sides_of_the_middleware(fake_api: FakeApi) -> None:
    # PEP 3333: keys without a dot hold strings; the tracker sits in "atrack.tracker".
    # The validator outside checks what the server-facing side does, the one inside
    # what the app sees (the environ, start_response, the body).
    from wsgiref.util import setup_testing_defaults

    from atrack_core import ATrackSdk, Options
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    sdk = ATrackSdk(Options("pub_test_key_1234", endpoint=fake_api.url))
    try:
        inner = wsgiref.validate.validator(_plain_wsgi)
        app = wsgiref.validate.validator(ATrackWSGIMiddleware(inner, sdk=sdk))
        for path in ("/ctx", "/health"):
            environ: dict[str, Any] = {"SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "a=1"}
            setup_testing_defaults(environ)
            started: list[tuple[str, list[tuple[str, str]]]] = []

            def start_response(
                status: str,
                headers: list[tuple[str, str]],
                exc_info: Any = None,
                started: list[tuple[str, list[tuple[str, str]]]] = started,
            ) -> Any:
                started.append((status, headers))
                return lambda data: None

            with _no_warnings():
                body = app(environ, start_response)
                data = b"".join(body)
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            assert started[0][0] == "200 OK"
            assert "atrack" not in environ
            assert environ["atrack.tracker"].context["url"] == f"{path}?a=1"
            if path == "/ctx":
                assert json.loads(data)["url"] == "/ctx?a=1"
                assert any(name == "Set-Cookie" for name, _ in started[0][1])
    finally:
        sdk.shutdown()


class _no_warnings:
    """wsgiref.validate reports problems as WSGIWarning: make them errors here."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
