"""ATrackMiddleware under a real uvicorn server on loopback, delivering to the fake API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from atrack_core import ATrackSdk, EventPayload, Options
from tests.fake_api import FakeApi, closed_port_url
from tests.integrations.asgi_helpers import (
    UUID_RE,
    AppError,
    LogRecorder,
    make_app,
    record_atrack_logs,
    serve,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogRecorder]:
    with record_atrack_logs() as recorder:
        yield recorder


@pytest.fixture
def sdk(fake_api: FakeApi) -> Iterator[ATrackSdk]:
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=fake_api.url, shutdown_timeout=5.0))
    yield sdk
    sdk.shutdown()


def test_cookie_round_trip_one_init_and_context(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    with serve(make_app(sdk)) as url, httpx.Client(base_url=url) as client:
        texts = [
            client.get("/", params={"source": "ad"}, headers={"user-agent": "E2E/1"}).text
            for _ in range(3)
        ]
        assert client.cookies.get("atrack_uuid") == texts[0]
    uuid = texts[0]
    assert UUID_RE.match(uuid)
    assert texts == [uuid] * 3
    assert sdk.flush(5)
    inits = fake_api.bodies("/init")
    events = fake_api.bodies("/event")
    assert [(i["uuid"], i["isNewUser"]) for i in inits] == [(uuid, True)]
    assert len(events) == 3
    for event in events:
        assert event["uuid"] == uuid
        assert event["context"] == {
            "url": "/?source=ad",
            "ipAddress": "127.0.0.1",
            "userAgent": "E2E/1",
        }
    assert fake_api.received[0].headers["x-a-track-key"] == "pub_test_1234"


def test_streaming_responses_are_not_buffered(sdk: ATrackSdk) -> None:
    with serve(make_app(sdk)) as url, httpx.Client(base_url=url) as client:
        started = time.monotonic()
        with client.stream("GET", "/stream", params={"delay": "1.0"}) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            first_at = time.monotonic() - started
            rest = b"".join(chunks)
            done_at = time.monotonic() - started
        assert response.headers.get("set-cookie", "").startswith("atrack_uuid=")
    assert first == b"first\n"
    assert rest == b"second\n"
    assert first_at < 0.7 < done_at


def test_websockets_pass_through(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    from websockets.sync.client import connect

    with serve(make_app(sdk)) as url, connect(url.replace("http://", "ws://") + "/ws") as ws:
        ws.send("hello")
        # The websocket scope carries no tracker: the middleware left it untouched.
        assert ws.recv(timeout=5) == "echo:hello:False"
    assert sdk.flush(5)
    assert fake_api.received == []


def test_lifespan_shutdown_flushes_what_the_app_tracked(fake_api: FakeApi) -> None:
    fake_api.latency = 0.3  # slow API: only a flush makes the event arrive in time
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=fake_api.url, shutdown_timeout=5.0))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        # Tracked by the app's own shutdown code: flushed after it, before the exit.
        sdk.track(EventPayload("server_stopped", uuid="ops"))

    try:
        with serve(make_app(sdk, lifespan=lifespan)):
            pass
        # serve() returned: uvicorn finished its lifespan shutdown.
        assert [b["event"] for b in fake_api.bodies("/event")] == ["server_stopped"]
    finally:
        sdk.shutdown()


def test_app_exceptions_reach_the_app_handler_unchanged(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    async def on_app_error(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(f"handled {type(exc).__name__}: {exc}", status_code=418)

    app = make_app(sdk, exception_handlers={AppError: on_app_error})
    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.get("/boom")
    assert response.status_code == 418
    assert response.text == "handled AppError: the app's own failure"
    assert response.headers["set-cookie"].startswith("atrack_uuid=")


def test_unhandled_app_exceptions_give_the_servers_500(sdk: ATrackSdk) -> None:
    with serve(make_app(sdk)) as url, httpx.Client(base_url=url) as client:
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.text == "Internal Server Error"


def test_fifty_concurrent_clients_keep_their_own_uuid(sdk: ATrackSdk, fake_api: FakeApi) -> None:
    async def visitor(url: str, n: int) -> tuple[int, str]:
        async with httpx.AsyncClient(base_url=url) as client:
            uuids = set()
            for _ in range(4):
                response = await client.get("/", params={"source": f"client-{n}"})
                uuids.add(response.text)
                await asyncio.sleep(0)
            assert uuids == {client.cookies["atrack_uuid"]}
            return n, uuids.pop()

    async def crowd(url: str) -> list[tuple[int, str]]:
        return await asyncio.gather(*(visitor(url, n) for n in range(50)))

    with serve(make_app(sdk)) as url:
        results = asyncio.run(crowd(url))
    assert sdk.flush(10)
    by_client = dict(results)
    assert len(set(by_client.values())) == 50
    events = fake_api.bodies("/event")
    assert len(events) == 200
    for event in events:
        n = int(event["attributes"]["source"].removeprefix("client-"))
        assert event["uuid"] == by_client[n]
        assert event["context"]["url"] == f"/?source=client-{n}"
    inits = fake_api.bodies("/init")
    assert sorted(i["uuid"] for i in inits) == sorted(by_client.values())


def test_api_down_does_not_slow_requests(logs: LogRecorder) -> None:
    logs.expect_errors()  # the SDK reports the undeliverable calls
    sdk = ATrackSdk(Options("pub_test_1234", endpoint=closed_port_url(), shutdown_timeout=0.5))

    def mean_latency(url: str, n: int = 30) -> float:
        with httpx.Client(base_url=url) as client:
            client.get("/")  # connect, warm up
            started = time.monotonic()
            for i in range(n):
                # A new visitor each time: each request sends an /init and an event.
                client.cookies.clear()
                assert client.get("/", params={"i": str(i)}).status_code == 200
            return (time.monotonic() - started) / n

    try:
        with serve(make_app(None, middleware=False)) as url:
            bare = mean_latency(url)
        with serve(make_app(sdk)) as url:
            tracked = mean_latency(url)
    finally:
        sdk.shutdown()
    assert tracked < 0.05, (bare, tracked)
    assert tracked < bare + 0.02, (bare, tracked)


def test_example_app_runs_under_uvicorn(fake_api: FakeApi) -> None:
    pytest.importorskip("fastapi")  # the example is the FastAPI shop
    import os
    import signal
    import subprocess
    import sys

    from tests.fake_api import closed_port_url as free_url

    port = int(free_url().rsplit(":", 1)[1])
    env = {
        **os.environ,
        "ATRACK_PUBLIC_KEY": "pub_example_1234",
        "ATRACK_ENDPOINT": fake_api.url,
    }
    env.pop("ATRACK_DISABLED", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "example_apps.fastapi_shop.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=url) as client:
            while True:
                try:
                    assert client.get("/health").status_code == 200
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            assert client.get("/", params={"source": "newsletter"}).status_code == 200
            signup = client.post("/signup", json={"email": "ada@example.com", "plan": "pro"})
            assert signup.status_code == 200
            order = client.post("/orders", json={"amount": 42.5, "currency": "EUR"})
            assert order.status_code == 201
            uuid = client.cookies["atrack_uuid"]
    finally:
        proc.terminate()  # SIGTERM: uvicorn runs the lifespan shutdown, which flushes
        proc.wait(20)
    # Recent uvicorn re-raises the signal after its graceful shutdown.
    assert proc.returncode in (0, -signal.SIGTERM)
    bodies = [(r.path, r.body) for r in fake_api.received]
    assert ("/init", uuid) in [(p, b["uuid"]) for p, b in bodies]
    events = {b["event"]: b for p, b in bodies if p == "/event"}
    assert events["landing_viewed"]["attributes"] == {"source": "newsletter"}
    assert events["order_created"]["attributes"] == {"amount": 42.5, "currency": "EUR"}
    attrs = [b for p, b in bodies if p == "/attributes"]
    assert attrs[0]["attributes"] == {"plan": "pro", "email_domain": "example.com"}
    assert all(b["uuid"] == uuid for _, b in bodies)
