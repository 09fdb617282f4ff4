"""Micro-benchmark: what A-Track adds to one request under Django, Flask and plain WSGI.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_middleware_wsgi.py [--quick]

The companion of ``bench_middleware.py`` (Starlette), with the same method and inputs:
the same browser headers and cookies, the same SDK set-up, the same app measured with
and without A-Track in one run, interleaved, best of several repeats. Each request is a
direct WSGI call with a prebuilt environ (copied per request, as a server hands out a
fresh one) to the framework's own entry point, so the figures hold the framework and
the middleware and nothing else:

- Django: ``WSGIHandler()(environ, start_response)`` with ``SecurityMiddleware`` and
  ``CommonMiddleware`` in both apps, ``ATrackMiddleware`` added in one;
- Django async mode: ``await ATrackMiddleware(async_view)(ASGIRequest(...))`` against
  ``await async_view(...)`` (Django's ``ASGIHandler`` itself is left out: its
  per-request thread hops for signals cost milliseconds on a loaded machine and drown a
  15 µs difference);
- Flask: ``app.wsgi_app(environ, start_response)``, ``ATrack(app)`` on one app;
- plain WSGI: a one-line app, bare and inside ``ATrackWSGIMiddleware``.

The view is identical with and without A-Track: it calls ``track()`` when a tracker is
attached. Scenarios (``bench_middleware.SCENARIOS``): a returning user (valid cookie,
one ``track()``: the SPEC's headline figure, target <= 15 µs added), a first visit
(uuid generated, ``/init``, ``Set-Cookie``, plus the ``track()``), and a returning user
on a page whose view tracks nothing (the middleware's own cost).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_middleware import (
    BROWSER_HEADERS,
    SCENARIOS,
    Row,
    make_sdk,
)
from bench_middleware import main as run_benches

from atrack_core import ATrackSdk

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def wsgi_environ(cookie: str, path: str = "/products") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "source=google&page=2",
        "RAW_URI": f"{path}?source=google&page=2",
        "SERVER_NAME": "shop.example",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "134.122.17.144",
        "REMOTE_PORT": "51234",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in [*BROWSER_HEADERS, ("cookie", cookie)]:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def time_wsgi(app: WSGIApp, environ: dict[str, Any], n: int) -> float:
    """µs per request, calling the WSGI app directly (no server, no client)."""
    import io

    start_response = _start_response
    start = time.perf_counter_ns()
    for _ in range(n):
        env = environ.copy()
        env["wsgi.input"] = io.BytesIO()
        result = app(env, start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()  # Django sends request_finished here, as under a real server
    return (time.perf_counter_ns() - start) / n / 1000


def _check_ok(app: WSGIApp, environ: dict[str, Any], label: str) -> None:
    """The scenarios come from bench_middleware: make sure each one hits a real page."""
    import io

    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)

    result = app({**environ, "wsgi.input": io.BytesIO()}, start_response)
    for _chunk in result:
        pass
    getattr(result, "close", lambda: None)()
    if not seen or not seen[0].startswith("200"):
        raise SystemExit(f"scenario {label!r}: {environ['PATH_INFO']} answered {seen}")


def compare(bare: WSGIApp, tracked: WSGIApp, n: int, repeats: int) -> list[Row]:
    """Best batch of each app. ``n`` requests per repeat are cut into batches of 500,
    bare and tracked alternating: on a shared machine a burst of load hits a batch or
    two of either, and the minimum keeps the undisturbed ones."""
    rows: list[Row] = []
    batch = min(500, n)
    for label, cookie, path in SCENARIOS:
        environ = wsgi_environ(cookie, path)
        for app in (bare, tracked):
            _check_ok(app, environ, label)
            time_wsgi(app, environ, 200)  # warm caches, routes, lazy imports
        bare_runs: list[float] = []
        tracked_runs: list[float] = []
        for _ in range(repeats):
            gc.collect()
            for _ in range(max(1, n // batch)):
                bare_runs.append(time_wsgi(bare, environ, batch))
                tracked_runs.append(time_wsgi(tracked, environ, batch))
        rows.append((label, min(bare_runs), min(tracked_runs)))
    return rows


# ---------------------------------------------------------------------------- Django

_django_sdk: ATrackSdk | None = None


def _django_setup() -> ATrackSdk:
    """Configure Django once for the Django benches (one settings object per process)."""
    global _django_sdk
    if _django_sdk is not None:
        return _django_sdk
    import django
    from django.conf import settings

    _django_sdk = make_sdk()
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["shop.example"],
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        DATABASES={},
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        ATRACK={"SDK": _django_sdk},
    )
    django.setup()
    return _django_sdk


BARE_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
TRACKED_MIDDLEWARE = [*BARE_MIDDLEWARE, "atrack_integrations.django.ATrackMiddleware"]


def products(request: Any) -> Any:
    from django.http import HttpResponse

    # The same view in both apps: it tracks when the middleware is installed.
    tracker = getattr(request, "atrack", None)
    if tracker is not None:
        tracker.track("product_list_viewed", {"page": 2})
    return HttpResponse("products")


def about(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("about")  # no track(): the middleware's own cost


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("products", products), path("about", about)]


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF is this module; Django reads urlpatterns lazily, after setup.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def _django_handler(middleware: list[str]) -> Any:
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    # A handler loads MIDDLEWARE when built, so two handlers hold two chains.
    with override_settings(MIDDLEWARE=middleware):
        return WSGIHandler()


def bench_django(n: int, repeats: int) -> list[Row]:
    _django_setup()
    bare = _django_handler(BARE_MIDDLEWARE)
    tracked = _django_handler(TRACKED_MIDDLEWARE)
    return compare(bare, tracked, n, repeats)


def bench_django_async(n: int, repeats: int) -> list[Row]:
    """The middleware in async mode (as under ASGI), without Django's ASGIHandler: an
    ``ASGIRequest`` per request, then ``await middleware(request)`` over an async view,
    against awaiting the view directly. Shows the async path has no thread hop."""
    import asyncio
    import io

    from django.core.handlers.asgi import ASGIRequest

    from atrack_integrations.django import ATrackMiddleware

    _django_setup()

    async def view(request: Any) -> Any:
        if request.path == "/products":
            return products(request)
        return about(request)

    tracked = ATrackMiddleware(view)

    def scope(cookie: str, path: str) -> dict[str, Any]:
        headers = [(k.encode(), v.encode()) for k, v in [*BROWSER_HEADERS, ("cookie", cookie)]]
        return {
            "type": "http",
            "method": "GET",
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"source=google&page=2",
            "root_path": "",
            "headers": headers,
            "client": ("134.122.17.144", 51234),
            "server": ("10.0.0.5", 8000),
        }

    async def time_app(app: Any, s: dict[str, Any], count: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(count):
            await app(ASGIRequest(s, io.BytesIO()))
        return (time.perf_counter_ns() - start) / count / 1000

    async def run() -> list[Row]:
        rows: list[Row] = []
        batch = min(500, n)
        for label, cookie, path in SCENARIOS:
            s = scope(cookie, path)
            for app in (view, tracked):
                await time_app(app, s, 200)
            bare_runs: list[float] = []
            tracked_runs: list[float] = []
            for _ in range(repeats):
                gc.collect()
                for _ in range(max(1, n // batch)):
                    bare_runs.append(await time_app(view, s, batch))
                    tracked_runs.append(await time_app(tracked, s, batch))
            rows.append((label, min(bare_runs), min(tracked_runs)))
        return rows

    return asyncio.run(run())


# ---------------------------------------------------------------------------- Flask


def bench_flask(n: int, repeats: int) -> list[Row]:
    from flask import Flask, request

    from atrack_integrations.flask import ATrack

    def build(sdk: ATrackSdk | None) -> Any:
        app = Flask(__name__)

        @app.get("/products")
        def view() -> str:
            # The same view in both apps: it tracks when the extension is installed.
            tracker = getattr(request, "atrack", None)
            if tracker is not None:
                tracker.track("product_list_viewed", {"page": 2})
            return "products"

        @app.get("/about")
        def about() -> str:
            return "about"  # no track(): the extension's own cost

        if sdk is not None:
            ATrack(app, sdk=sdk)
        return app

    sdk = make_sdk()
    try:
        return compare(build(None).wsgi_app, build(sdk).wsgi_app, n, repeats)
    finally:
        sdk.shutdown(timeout=0.1)


# ---------------------------------------------------------------------------- plain WSGI


def bench_wsgi(n: int, repeats: int) -> list[Row]:
    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        tracker = environ.get("atrack.tracker")
        if tracker is not None and environ["PATH_INFO"] == "/products":
            tracker.track("product_list_viewed", {"page": 2})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"products"]

    sdk = make_sdk()
    try:
        return compare(app, ATrackWSGIMiddleware(app, sdk=sdk), n, repeats)
    finally:
        sdk.shutdown(timeout=0.1)


BENCHES: dict[str, Callable[[int, int], list[Row]]] = {
    "django": bench_django,
    "django-async": bench_django_async,
    "flask": bench_flask,
    "wsgi": bench_wsgi,
}


def main(argv: list[str]) -> int:
    try:
        return run_benches(argv, BENCHES)
    finally:
        if _django_sdk is not None:
            _django_sdk.shutdown(timeout=0.1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
