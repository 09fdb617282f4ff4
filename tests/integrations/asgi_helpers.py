"""Shared helpers of the ASGI integration tests: a small Starlette app, an in-process
client, a real uvicorn server on loopback, and a guard that turns errors the middleware
logged (and swallowed) back into test failures."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from atrack_core import ATrackSdk
from atrack_integrations.asgi import ATrackMiddleware

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
KNOWN = "0d54a1f2-3b4c-4d5e-8f90-123456789abc"


class AppError(Exception):
    """Raised by the test app's /boom view: must reach the server unchanged."""


async def home(request: Request) -> PlainTextResponse:
    tracker = getattr(request.state, "atrack", None)  # also served without the middleware
    if tracker is None:
        return PlainTextResponse("untracked")
    tracker.track("page_viewed", {"source": request.query_params.get("source")})
    return PlainTextResponse(tracker.uuid)


async def quiet(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.state.atrack.uuid)


async def signup(request: Request) -> JSONResponse:
    tracker = request.state.atrack
    tracker.set_attributes({"plan": request.query_params.get("plan", "free")})
    return JSONResponse({"uuid": tracker.uuid})


async def login(request: Request) -> JSONResponse:
    tracker = request.state.atrack
    attrs = {"plan": "pro"} if request.query_params.get("attrs") else None
    tracker.identify(request.query_params["uuid"], attrs)
    tracker.track("logged_in")
    return JSONResponse({"uuid": tracker.uuid})


async def boom(request: Request) -> PlainTextResponse:
    request.state.atrack.track("about_to_fail")
    raise AppError("the app's own failure")


async def bad_event(request: Request) -> PlainTextResponse:
    request.state.atrack.track("")  # ValueError: call-site validation reaches the view
    return PlainTextResponse("unreachable")


async def stream(request: Request) -> StreamingResponse:
    request.state.atrack.track("stream_started")
    delay = float(request.query_params.get("delay", "0"))

    async def chunks() -> Any:
        yield b"first\n"
        await asyncio.sleep(delay)
        yield b"second\n"

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}:{'atrack' in websocket.scope.get('state', {})}")
    await websocket.close()


ROUTES = [
    Route("/", home),
    Route("/quiet", quiet),
    Route("/health", home),
    Route("/static/app.js", home),
    Route("/signup", signup, methods=["POST"]),
    Route("/login", login, methods=["POST"]),
    Route("/boom", boom),
    Route("/bad", bad_event),
    Route("/stream", stream),
    Route("/page", home, methods=["GET", "HEAD", "OPTIONS"]),
    WebSocketRoute("/ws", echo),
]


def make_app(
    sdk: ATrackSdk | None,
    *,
    middleware: bool = True,
    lifespan: Any = None,
    exception_handlers: Any = None,
    **settings: Any,
) -> Starlette:
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=exception_handlers)
    if middleware:
        app.add_middleware(ATrackMiddleware, sdk=sdk, **settings)
    return app


def call(
    app: Any,
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    cookie: str | None = None,
    scheme: str = "http",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    json: Any = None,
) -> httpx.Response:
    """One request through ``app`` in-process (httpx's ASGI transport)."""
    all_headers = dict(headers or {})
    if cookie is not None:
        all_headers["cookie"] = cookie

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(
            transport=transport, base_url=f"{scheme}://shop.example"
        ) as http:
            return await http.request(method, path, headers=all_headers, json=json)

    return asyncio.run(go())


def cookie_value(response: httpx.Response, name: str = "atrack_uuid") -> str | None:
    """The value the response sets for ``name`` (``None`` when it sets none)."""
    values = [v for v in response.headers.get_list("set-cookie") if v.startswith(name + "=")]
    assert len(values) <= 1, values
    return values[0].split(";", 1)[0].split("=", 1)[1] if values else None


def cookie_attributes(response: httpx.Response) -> list[str]:
    (value,) = response.headers.get_list("set-cookie")
    return [part.strip() for part in value.split(";")[1:]]


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.errors_expected = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def expect_errors(self) -> LogRecorder:
        """The test provokes failures the middleware must log; do not fail on them."""
        self.errors_expected = True
        return self

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextmanager
def record_atrack_logs() -> Iterator[LogRecorder]:
    logger = logging.getLogger("atrack")
    recorder = LogRecorder()
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
    if not recorder.errors_expected:
        errors = [r for r in recorder.records if r.levelno >= logging.ERROR]
        assert not errors, "the middleware logged errors: " + "; ".join(
            r.getMessage() + (f" ({r.exc_info[1]!r})" if r.exc_info else "") for r in errors
        )


@contextmanager
def serve(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free loopback port; yield its URL."""
    import uvicorn
    from uvicorn.config import WS_PROTOCOLS

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan=lifespan,
        log_level="warning",
        # The sans-I/O implementation where uvicorn has it (>= 0.35): the older one uses
        # websockets' deprecated legacy API, and warnings are errors in this suite.
        ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "auto",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
