"""What a user pays per tracked web request, delivery included.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_request_delivery.py [--quick] [--target collector]

``bench_middleware.py`` measures the request path alone (its SDK sends into a socket
that never answers, so delivery costs nothing there). Here the SDK delivers every call
to a live loopback server in another process (``bench/_server.py``, or the project's
collector with ``--target collector``), and the figure is the **CPU time of the whole
process per request**: the request handled by the framework, one ``track()`` in the
view, and the sender thread(s) delivering the event, with ``flush()`` inside the
measurement so no delivery is left out. Side by side in one run, interleaved:

- ``bare``: the same app without A-Track (its view tracks nothing);
- ``curl``: A-Track with the libcurl transport (``Options(transport="curl")``);
- ``httpx``: A-Track with the pure-Python httpx transport.

A returning user (valid ``atrack_uuid`` cookie) requests a page whose view tracks one
event: one ``/event`` call per request (and one ``/init`` for the whole run). Requests
are driven directly through the framework's entry point (no HTTP server in front), as
in ``bench_middleware.py``: what is measured is the app plus A-Track. Each row is the
median of the repeats; "added" is the variant's CPU per request minus bare's.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer, CollectorServer
from bench_middleware import RETURNING_COOKIE, asgi_scope
from bench_middleware_wsgi import wsgi_environ

from atrack_core import ATrackSdk, Options

TRANSPORTS = ("curl", "httpx")
# Drive n requests through one app.
Driver = Callable[[int], None]


def make_sdk(url: str, transport: str) -> ATrackSdk:
    return ATrackSdk(
        Options(
            "pub_bench_delivery_1",
            endpoint=url,
            transport=transport,  # type: ignore[arg-type]
            max_queue_size=10_000_000,
            shutdown_timeout=5.0,
        )
    )


def _receive_factory() -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


async def _send(message: dict[str, Any]) -> None:
    return None


def starlette_drivers(url: str) -> tuple[dict[str, Driver], dict[str, ATrackSdk]]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from atrack_integrations.asgi import ATrackMiddleware

    async def products(request: Request) -> PlainTextResponse:
        tracker = request.scope.get("state", {}).get("atrack")
        if tracker is not None:
            tracker.track("product_list_viewed", {"page": 2})
        return PlainTextResponse("products")

    def build(sdk: ATrackSdk | None) -> Any:
        app = Starlette(routes=[Route("/products", products)])
        if sdk is not None:
            app.add_middleware(ATrackMiddleware, sdk=sdk)
        return app

    scope = asgi_scope(RETURNING_COOKIE, "/products")
    loop = asyncio.new_event_loop()
    receive = _receive_factory()

    def driver(app: Any) -> Driver:
        async def many(n: int) -> None:
            for _ in range(n):
                await app(scope.copy(), receive, _send)

        return lambda n: loop.run_until_complete(many(n))

    sdks = {t: make_sdk(url, t) for t in TRANSPORTS}
    drivers = {"bare": driver(build(None))}
    drivers.update({t: driver(build(sdk)) for t, sdk in sdks.items()})
    return drivers, sdks


def flask_drivers(url: str) -> tuple[dict[str, Driver], dict[str, ATrackSdk]]:
    from flask import Flask, request

    from atrack_integrations.flask import ATrack

    def build(sdk: ATrackSdk | None) -> Any:
        app = Flask(__name__)

        @app.get("/products")
        def view() -> str:
            tracker = getattr(request, "atrack", None)
            if tracker is not None:
                tracker.track("product_list_viewed", {"page": 2})
            return "products"

        if sdk is not None:
            ATrack(app, sdk=sdk)
        return app.wsgi_app

    sdks = {t: make_sdk(url, t) for t in TRANSPORTS}
    apps = {"bare": build(None), **{t: build(sdk) for t, sdk in sdks.items()}}
    return {name: wsgi_driver(app) for name, app in apps.items()}, sdks


def wsgi_driver(app: Any) -> Driver:
    environ = wsgi_environ(RETURNING_COOKIE, "/products")

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def many(n: int) -> None:
        for _ in range(n):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO()
            result = app(env, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return many


def django_drivers(url: str) -> tuple[dict[str, Driver], dict[str, ATrackSdk]]:
    """Django reads its SDK from ``settings.ATRACK`` (one per process): each tracked
    variant runs under ``override_settings(ATRACK={"SDK": ...})``."""
    import bench_middleware_wsgi as wsgi_bench
    from django.test import override_settings

    wsgi_bench._django_setup()
    bare = wsgi_bench._django_handler(wsgi_bench.BARE_MIDDLEWARE)
    tracked = wsgi_bench._django_handler(wsgi_bench.TRACKED_MIDDLEWARE)
    sdks = {t: make_sdk(url, t) for t in TRANSPORTS}

    def with_sdk(sdk: ATrackSdk) -> Driver:
        inner = wsgi_driver(tracked)

        def many(n: int) -> None:
            with override_settings(ATRACK={"SDK": sdk}):
                inner(n)

        return many

    drivers = {"bare": wsgi_driver(bare)}
    drivers.update({t: with_sdk(sdk) for t, sdk in sdks.items()})
    return drivers, sdks


FRAMEWORKS: dict[str, Callable[[str], tuple[dict[str, Driver], dict[str, ATrackSdk]]]] = {
    "starlette": starlette_drivers,
    "django": django_drivers,
    "flask": flask_drivers,
}


def measure(drive: Driver, sdk: ATrackSdk | None, n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per request for ``n`` requests, delivery included."""
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    drive(n)
    if sdk is not None and not sdk.flush(120):
        raise SystemExit("flush timed out: the numbers would leave delivery out")
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return cpu / n * 1e6, wall / n * 1e6


def run(framework: str, url: str, count: Callable[[], int], n: int, repeats: int) -> None:
    drivers, sdks = FRAMEWORKS[framework](url)
    try:
        for name, drive in drivers.items():  # warm: imports, routes, connections, /init
            drive(200)
            if name in sdks:
                sdks[name].flush(30)
        cpu: dict[str, list[float]] = {name: [] for name in drivers}
        wall: dict[str, list[float]] = {name: [] for name in drivers}
        for _ in range(repeats):
            for name, drive in drivers.items():
                before = count()
                c, w = measure(drive, sdks.get(name), n)
                arrived = count() - before
                expected = 0 if name == "bare" else n
                if arrived < expected:
                    raise SystemExit(f"{framework} {name}: {arrived} of {expected} delivered")
                cpu[name].append(c)
                wall[name].append(w)
        bare = statistics.median(cpu["bare"])
        for name in drivers:
            med = statistics.median(cpu[name])
            added = "" if name == "bare" else f"   added {med - bare:+7.1f} µs"
            print(
                f"{framework:<10} {name:<6} CPU {med:7.1f} µs/request "
                f"(runs {min(cpu[name]):.0f}-{max(cpu[name]):.0f})   "
                f"wall {statistics.median(wall[name]):7.1f} µs{added}",
                flush=True,
            )
    finally:
        for sdk in sdks.values():
            sdk.shutdown(5)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n, repeats = (1_000, 3) if quick else (5_000, 5)
    target = "collector" if "--target" in argv and "collector" in argv else "bench"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Python {sys.version.split()[0]}; {n} requests x {repeats} repeats (median), "
        f"target {target}, load average {load:.1f}"
    )
    server: Any = CollectorServer() if target == "collector" else BenchServer()
    with server:
        for framework in FRAMEWORKS:
            try:
                run(framework, server.url, server.count, n, repeats)
            except ImportError as exc:
                print(f"{framework:<10} skipped: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
