"""The aiohttp middleware under aiohttp.web on a real loopback socket, delivering to the
fake API: one /init per user session, the cookie, exclusions, current_tracker() (streamed
responses, thread hops, hundreds of concurrent requests), and the flush on cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid as uuid_mod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("aiohttp")

import httpx
from aiohttp import web

from atrack_core import ATrackSdk, Options
from atrack_integrations import current_tracker
from atrack_integrations.aiohttp import CONFIG_KEY, get_tracker, setup
from tests.fake_api import FakeApi, Plan
from tests.integrations.test_wsgi_servers import atrack_log_guard  # noqa: F401

pytestmark = pytest.mark.slow

UUID_COOKIE = "atrack_uuid"


def who() -> str:
    tracker = current_tracker()
    return "none" if tracker is None else tracker.uuid


async def index(request: web.Request) -> web.Response:
    tracker = get_tracker(request)
    tracker.track("page_viewed", {"tag": request.query.get("tag", "")})
    await asyncio.sleep(0.001 * (hash(request.query_string) % 4))  # interleave requests
    in_thread = await asyncio.to_thread(who)  # to_thread copies the context
    return web.json_response(
        {
            "uuid": tracker.uuid,
            "who": who(),
            "thread": in_thread,
            "same": tracker is current_tracker(),
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)  # headers go out here: the cookie must be on them
    for _ in range(2):
        await asyncio.sleep(0)
        await response.write(f"{who()}\n".encode())
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    request["atrack"].track("health_checked")  # a passive tracker still works
    return web.Response(text="ok")


async def login(request: web.Request) -> web.Response:
    raise web.HTTPFound("/", headers={"x-who": who()})


def make_app(sdk: ATrackSdk, **settings: Any) -> web.Application:
    app = web.Application()
    setup(app, sdk=sdk, **settings)
    app.router.add_get("/", index)
    app.router.add_get("/stream", stream)
    app.router.add_get("/health", health)
    app.router.add_get("/login", login)
    return app


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    # A backlog for the 300 connections one test opens at once (aiohttp's default, 128,
    # left SYNs to be retried after 1 s and 3 s on a loaded machine).
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()  # runs app.on_cleanup: the SDK's flush


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


@pytest.fixture
def sdk(fake_api: FakeApi) -> Any:
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=fake_api.url, shutdown_timeout=5.0))
    yield sdk
    sdk.shutdown()


def test_one_init_per_session_cookie_and_context(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    async def test() -> None:
        async with running(make_app(sdk)) as url, httpx.AsyncClient(base_url=url) as client:
            first = await client.get("/?source=ad&tag=a", headers={"user-agent": "E2E/1"})
            uuid = first.json()["uuid"]
            assert first.cookies.get(UUID_COOKIE) == uuid
            set_cookie = first.headers["set-cookie"]
            assert "HttpOnly" in set_cookie and "Path=/" in set_cookie
            for _ in range(2):
                again = await client.get("/?tag=b", headers={"user-agent": "E2E/1"})
                assert again.json()["uuid"] == uuid
                assert "set-cookie" not in again.headers  # a returning user: no new cookie
        assert first.json() == {"uuid": uuid, "who": uuid, "thread": uuid, "same": True}

    run(test)
    inits = fake_api.bodies("/init")
    events = fake_api.bodies("/event")
    assert [i["uuid"] for i in inits] == [inits[0]["uuid"]]  # one /init
    uuid = inits[0]["uuid"]
    assert inits[0]["context"] == {
        "url": "/?source=ad&tag=a",
        "ipAddress": "127.0.0.1",
        "userAgent": "E2E/1",
    }
    # One user's events are not ordered among themselves (each goes out as soon as a
    # sender is free): the API may receive the second request's before the first's
    # (CI saw it, on Python 3.13).
    assert sorted((e["uuid"], e["attributes"]["tag"]) for e in events) == [
        (uuid, "a"),
        (uuid, "b"),
        (uuid, "b"),
    ]


def test_excluded_paths_and_head_send_no_init_and_set_no_cookie(
    sdk: ATrackSdk, fake_api: FakeApi
) -> None:
    async def test() -> None:
        async with running(make_app(sdk)) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/health")
            assert response.text == "ok"
            assert "set-cookie" not in response.headers
            head = await client.head("/")
            assert "set-cookie" not in head.headers

    run(test)
    assert fake_api.bodies("/init") == []
    events = sorted(e["event"] for e in fake_api.bodies("/event"))
    assert events == ["health_checked", "page_viewed"]  # passive trackers still track


def test_streamed_and_raised_responses_get_the_cookie_and_tracker(sdk: ATrackSdk) -> None:
    async def test() -> None:
        async with running(make_app(sdk)) as url, httpx.AsyncClient(base_url=url) as client:
            streamed = await client.get("/stream")
            uuid = streamed.cookies[UUID_COOKIE]
            assert streamed.text.split() == [uuid, uuid]
            client.cookies.clear()
            redirect = await client.get("/login")
            assert redirect.status_code == 302
            assert redirect.headers["x-who"] == redirect.cookies[UUID_COOKIE]

    run(test)


def test_concurrent_requests_each_see_their_own_tracker(sdk: ATrackSdk) -> None:
    async def one(client: httpx.AsyncClient, i: int) -> None:
        uuid = str(uuid_mod.uuid4())
        response = await client.get(f"/?tag=c{i}", headers={"cookie": f"{UUID_COOKIE}={uuid}"})
        assert response.json() == {"uuid": uuid, "who": uuid, "thread": uuid, "same": True}

    async def test() -> None:
        async with (
            running(make_app(sdk, init="off")) as url,
            # Client and server share this event loop: on a loaded machine 300 connects
            # can take longer than httpx's default 5 s (a ConnectTimeout once in CI).
            httpx.AsyncClient(
                base_url=url, limits=httpx.Limits(max_connections=300), timeout=60.0
            ) as client,
        ):
            await asyncio.gather(*(one(client, i) for i in range(300)))
        assert current_tracker() is None

    run(test)


def test_async_identify_hook_wins(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    async def identify(request: web.Request) -> str | None:
        await asyncio.sleep(0)
        return request.headers.get("x-user")

    async def test() -> None:
        app = make_app(sdk, identify=identify)
        assert app[CONFIG_KEY].sdk is sdk
        async with running(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/", headers={"x-user": "user-9"})
            assert response.json()["uuid"] == "user-9"

    run(test)
    assert [i["uuid"] for i in fake_api.bodies("/init")] == ["user-9"]


def test_cleanup_flushes_the_sdk(fake_api: FakeApi) -> None:
    # The event's first attempt is told to retry in 2 s: only a flush that waits for it
    # delivers the retry before cleanup returns.
    fake_api.plan("/event", Plan(503, retry_after="2"))
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=fake_api.url, shutdown_timeout=5.0))

    async def test() -> None:
        async with running(make_app(sdk, init="off")) as url, httpx.AsyncClient() as client:
            assert (await client.get(url + "/")).status_code == 200
        # running() returned: the runner's cleanup ran the flush.
        assert [r.status for r in fake_api.received] == [503, 200]

    try:
        run(test)
    finally:
        sdk.shutdown()


def test_setup_twice_is_refused(sdk: ATrackSdk) -> None:
    app = make_app(sdk)
    with pytest.raises(RuntimeError, match="already set up"):
        setup(app, sdk=sdk)


# A referer with bytes that are not UTF-8 (aiohttp hands them over as surrogates).
REFERER = b"https://shop.test/caf\xff?q=\xe9"


@pytest.mark.parametrize("user_agent", ["Mözilla/5 ✓".encode(), b"Caf\xe9/1 (latin-1)"])
def test_same_raw_request_same_context_as_asgi_and_wsgi(sdk: ATrackSdk, user_agent: bytes) -> None:
    from atrack_integrations.asgi import ATrackMiddleware
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    async def context_view(request: web.Request) -> web.Response:
        return web.json_response(request["atrack"].context)

    contexts: dict[str, Any] = {}

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        contexts["asgi"] = scope["state"]["atrack"].context
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        contexts["wsgi"] = environ["atrack.tracker"].context
        start_response("200 OK", [])
        return [b""]

    async def test() -> None:
        app = web.Application()
        setup(app, sdk=sdk, init="off")
        app.router.add_get("/p", context_view)
        async with running(app) as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"GET /p?q=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: " + user_agent
                + b"\r\nReferer: " + REFERER + b"\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            raw = await reader.read()
            writer.close()
        contexts["aiohttp"] = json.loads(raw.partition(b"\r\n\r\n")[2])
        scope = {
            "type": "http", "method": "GET", "path": "/p", "raw_path": b"/p",
            "query_string": b"q=1", "client": ("127.0.0.1", 5),
            "headers": [
                (b"host", b"shop.test"), (b"user-agent", user_agent), (b"referer", REFERER)
            ],
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: Any) -> None:
            return None

        await ATrackMiddleware(asgi_app, sdk=sdk, init="off")(scope, receive, send)

    run(test)
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/p", "QUERY_STRING": "q=1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "shop.test",
        "HTTP_USER_AGENT": user_agent.decode("latin-1"),  # PEP 3333
        "HTTP_REFERER": REFERER.decode("latin-1"),
    }  # fmt: skip
    ATrackWSGIMiddleware(wsgi_app, sdk=sdk, init="off")(environ, lambda *a: None)
    assert contexts["aiohttp"] == contexts["asgi"] == contexts["wsgi"]
    expected = (
        user_agent.decode("utf-8", "strict") if b"\xe9" not in user_agent else "Café/1 (latin-1)"
    )
    assert contexts["wsgi"]["userAgent"] == expected
    # A URL's bytes that are not UTF-8 percent-encoded as sent, as in a url.
    assert contexts["wsgi"]["referer"] == "https://shop.test/caf%FF?q=%E9"
