"""current_tracker() under the ASGI, WSGI and Flask adapters.

Set for the duration of a request (thread pools, streaming bodies included), reset after
(also when the app raises), and never seen by another request: hundreds of concurrent
requests under uvicorn and under gunicorn's gthread workers each find their own tracker,
and no server thread keeps one between requests. (Django: tests/integrations/django.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid as uuid_mod
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("flask")

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from atrack_core import ATrackSdk, Options
from atrack_integrations import NoRequestError, current_tracker, track
from atrack_integrations.asgi import ATrackMiddleware
from tests.fake_api import FakeApi
from tests.integrations.asgi_helpers import serve as serve_asgi
from tests.integrations.test_wsgi_servers import atrack_log_guard  # noqa: F401
from tests.integrations.test_wsgi_servers import request as http_request
from tests.integrations.test_wsgi_servers import serve as serve_process

CONCURRENT = 300


def who() -> str:
    """Service code that never sees the request."""
    tracker = current_tracker()
    return "none" if tracker is None else tracker.uuid


def new_uuid() -> str:
    return str(uuid_mod.uuid4())


@pytest.fixture
def sdk() -> Iterator[ATrackSdk]:
    sdk = ATrackSdk(Options("pub_test_1234", disabled=True))
    yield sdk
    sdk.shutdown()


# --------------------------------------------------------------------------- ASGI


async def async_view(request: Request) -> JSONResponse:
    await asyncio.sleep(0.001 * (hash(request.url.query) % 5))  # interleave the requests
    same = current_tracker() is request.state.atrack
    return JSONResponse({"uuid": request.state.atrack.uuid, "who": who(), "same": same})


def sync_view(request: Request) -> JSONResponse:
    # Starlette runs a plain def in its thread pool, with a copy of the context.
    threading.Event().wait(0.001)
    return JSONResponse({"uuid": request.state.atrack.uuid, "who": who()})


async def stream_view(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[str]:
        for _ in range(2):
            await asyncio.sleep(0)
            yield who() + "\n"

    def sync_chunks() -> Iterator[str]:
        yield who() + "\n"  # iterated in the thread pool

    return StreamingResponse(chunks() if "sync" not in request.query_params else sync_chunks())


async def boom_view(request: Request) -> JSONResponse:
    raise ValueError(f"boom as {who()}")


ASGI_ROUTES = [
    Route("/async", async_view),
    Route("/sync", sync_view),
    Route("/stream", stream_view),
    Route("/boom", boom_view),
]


def asgi_app(sdk: ATrackSdk) -> Starlette:
    app = Starlette(routes=ASGI_ROUTES)
    app.add_middleware(ATrackMiddleware, sdk=sdk)
    return app


@pytest.mark.slow
def test_asgi_concurrent_requests_under_uvicorn_see_their_own_tracker(sdk: ATrackSdk) -> None:
    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, dict[str, Any]]:
        uuid = new_uuid()
        path = "/async" if i % 2 else "/sync"
        response = await client.get(f"{path}?i={i}", headers={"cookie": f"atrack_uuid={uuid}"})
        assert response.status_code == 200, response.text
        return uuid, response.json()

    async def run(url: str) -> list[tuple[str, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=CONCURRENT)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(CONCURRENT)))

    with serve_asgi(asgi_app(sdk)) as url:
        results = asyncio.run(run(url))
    assert len({uuid for uuid, _ in results}) == CONCURRENT
    for uuid, body in results:
        assert body["uuid"] == uuid
        assert body["who"] == uuid
        assert body.get("same", True) is True


@pytest.mark.slow
def test_asgi_streaming_bodies_see_the_tracker(sdk: ATrackSdk) -> None:
    uuid = new_uuid()
    with serve_asgi(asgi_app(sdk)) as url, httpx.Client(base_url=url) as client:
        cookie = {"cookie": f"atrack_uuid={uuid}"}
        assert client.get("/stream", headers=cookie).text.split() == [uuid, uuid]
        assert client.get("/stream?sync=1", headers=cookie).text.split() == [uuid]


def test_asgi_reset_after_the_request_and_when_the_app_raises(sdk: ATrackSdk) -> None:
    app = ATrackMiddleware(Starlette(routes=ASGI_ROUTES), sdk=sdk)
    uuid = new_uuid()

    async def call(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": b"", "scheme": "http", "server": ("t", 80),
            "client": ("127.0.0.1", 1), "headers": [(b"cookie", f"atrack_uuid={uuid}".encode())],
        }  # fmt: skip
        # Called in this task's own context: what the middleware leaves set shows here.
        await app(scope, receive, send)
        assert current_tracker() is None
        return sent

    async def both() -> None:
        sent = await call("/async")
        assert json.loads(sent[1]["body"])["who"] == uuid
        with pytest.raises(ValueError, match=f"boom as {uuid}"):
            await call("/boom")
        assert current_tracker() is None

    asyncio.run(both())


# --------------------------------------------------------------------------- WSGI


def create_wsgi_app() -> Any:
    """gunicorn target: the WSGI middleware, with an outer layer that reports whether
    the server thread still had a tracker current before the request came in."""
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/health":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        threading.Event().wait(0.002)  # interleave the threads
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (f"{who()}\n".encode() for _ in range(2))
        body = json.dumps({"uuid": environ["atrack.tracker"].uuid, "who": who()})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]

    tracked = ATrackWSGIMiddleware(app)

    def outer(environ: dict[str, Any], start_response: Any) -> Any:
        before = "leak" if current_tracker() is not None else "clean"

        def respond(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*headers, ("X-Before", before)], *exc)

        return tracked(environ, respond)

    return outer


@pytest.mark.slow
def test_wsgi_concurrent_requests_under_gunicorn_gthread(fake_api: FakeApi) -> None:
    import concurrent.futures

    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    target = "tests.integrations.test_current:create_wsgi_app()"

    def one(i: int) -> None:
        uuid = new_uuid()
        path = "/stream" if i % 3 == 0 else "/who"
        status, headers, body = http_request(port, path, headers={"Cookie": f"atrack_uuid={uuid}"})
        assert status == 200, body
        assert headers["X-Before"] == "clean"
        if path == "/stream":
            assert body.decode().split() == [uuid, uuid]
        else:
            assert json.loads(body) == {"uuid": uuid, "who": uuid}

    with (
        serve_process("gunicorn", target, env, threads=16) as port,
        concurrent.futures.ThreadPoolExecutor(32) as pool,
    ):
        list(pool.map(one, range(CONCURRENT)))


def test_wsgi_reset_after_the_call_and_between_chunks(sdk: ATrackSdk) -> None:
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(who())
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("boom")

        def body() -> Iterator[bytes]:
            try:
                yield who().encode()
                yield who().encode()
            finally:
                seen.append("closed as " + who())

        return body()

    mw = ATrackWSGIMiddleware(app, sdk=sdk)
    uuid = new_uuid()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_COOKIE": f"atrack_uuid={uuid}"}
    body = mw(dict(environ), lambda *a: None)
    assert current_tracker() is None  # the call returned: the server's thread is clean
    iterator = iter(body)
    assert next(iterator) == uuid.encode()
    assert current_tracker() is None  # and between the chunks
    body.close()  # type: ignore[attr-defined]
    assert current_tracker() is None
    assert seen == [uuid, f"closed as {uuid}"]
    with pytest.raises(ValueError, match="boom"):
        mw({**environ, "PATH_INFO": "/boom"}, lambda *a: None)
    assert current_tracker() is None

    def list_app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"done"]

    # A list is returned as it is: no app code runs while it is iterated.
    listed = ATrackWSGIMiddleware(list_app, sdk=sdk)(dict(environ), lambda *a: None)
    assert listed == [b"done"] and listed.__class__ is list


# --------------------------------------------------------------------------- Flask


def flask_app(sdk: ATrackSdk, **settings: Any) -> Any:
    from flask import Flask, jsonify, request

    from atrack_integrations.flask import ATrack

    app = Flask(__name__)
    ATrack(app, sdk=sdk, **settings)

    @app.get("/who")
    def who_view() -> Any:
        return jsonify(uuid=request.atrack.uuid, who=who())

    @app.get("/awho")
    async def awho_view() -> Any:
        await asyncio.sleep(0)
        return jsonify(uuid=request.atrack.uuid, who=who())

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield who() + "\n"
            yield who() + "\n"

        return app.response_class(chunks())

    @app.get("/boom")
    def boom() -> Any:
        raise ValueError(f"boom as {who()}")

    return app


@pytest.mark.parametrize("identify", [False, True])
def test_flask_test_client_leaves_no_tracker_current(sdk: ATrackSdk, identify: bool) -> None:
    settings: dict[str, Any] = {}
    user = new_uuid()
    if identify:  # the tracker is started in before_request instead of the WSGI wrapper
        settings["identify"] = lambda request: request.headers.get("x-user")
    app = flask_app(sdk, **settings)
    client = app.test_client()
    uuid = new_uuid()
    headers = {"x-user": user} if identify else {"cookie": f"atrack_uuid={uuid}"}
    expected = user if identify else uuid
    if not identify:
        client.set_cookie("atrack_uuid", uuid)
    for path in ("/who", "/awho"):
        assert client.get(path, headers=headers).json == {"uuid": expected, "who": expected}
        assert current_tracker() is None
    response = client.get("/stream", headers=headers)
    assert current_tracker() is None
    assert response.get_data(as_text=True).split() == [expected, expected]
    assert current_tracker() is None
    app.testing = True
    with pytest.raises(ValueError, match=f"boom as {expected}"):
        client.get("/boom", headers=headers)
    assert current_tracker() is None
    with pytest.raises(NoRequestError):
        track("outside")


def test_flask_close_callbacks_and_streamed_bodies_see_the_tracker(sdk: ATrackSdk) -> None:
    # Flask's body is always werkzeug's ClosingIterator; one over a response held in
    # memory with no close callback runs no app code and is handed on as it is. Every
    # other one keeps the tracker current while it is iterated and closed: a response
    # with call_on_close, a streamed (generator) body, a response class whose close() is
    # its own, also when the server closes the body without iterating it (PEP 3333).
    from flask import Flask, Response, request

    from atrack_integrations.flask import ATrack

    seen: list[str] = []

    class OwnClose(Response):
        def close(self) -> None:
            seen.append("own close as " + who())
            super().close()

    app = Flask(__name__)
    ATrack(app, sdk=sdk)

    @app.get("/plain")
    def plain() -> Any:
        return request.atrack.uuid

    @app.get("/on-close")
    def on_close() -> Any:
        response = Response("body")
        response.call_on_close(lambda: seen.append("callback as " + who()))
        return response

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            try:
                yield who()
                yield who()
            finally:
                seen.append("generator closed as " + who())

        return Response(chunks())

    @app.get("/own-close")
    def own_close() -> Any:
        return OwnClose("body")

    uuid = new_uuid()
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "SERVER_NAME": "t", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": None,
        "HTTP_COOKIE": f"atrack_uuid={uuid}",
    }  # fmt: skip

    def call(path: str, *, iterate: bool) -> list[bytes]:
        body = app.wsgi_app({**environ, "PATH_INFO": path}, lambda *a: None)
        assert current_tracker() is None
        chunks = []
        if iterate:
            for chunk in body:
                assert current_tracker() is None  # not while the server holds a chunk
                chunks.append(chunk)
        body.close()  # type: ignore[attr-defined]
        assert current_tracker() is None
        return chunks

    assert call("/plain", iterate=True) == [uuid.encode()]
    # ... and handed on as werkzeug made it (no wrapper to pay for).
    from werkzeug.wsgi import ClosingIterator

    plain_body = app.wsgi_app({**environ, "PATH_INFO": "/plain"}, lambda *a: None)
    assert plain_body.__class__ is ClosingIterator
    plain_body.close()  # type: ignore[attr-defined]
    for iterate in (True, False):
        seen.clear()
        call("/on-close", iterate=iterate)
        assert seen == [f"callback as {uuid}"]
        seen.clear()
        call("/own-close", iterate=iterate)
        assert seen == [f"own close as {uuid}"]
    seen.clear()
    assert call("/stream", iterate=True) == [uuid.encode(), uuid.encode()]
    assert seen == [f"generator closed as {uuid}"]
    seen.clear()
    body = app.wsgi_app({**environ, "PATH_INFO": "/stream"}, lambda *a: None)
    assert next(iter(body)) == uuid.encode()
    body.close()  # type: ignore[attr-defined]  # cut after the first chunk
    assert seen == [f"generator closed as {uuid}"]
    assert current_tracker() is None
