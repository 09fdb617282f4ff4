"""Micro-benchmark: what the A-Track middleware adds to one request, in-process.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_middleware.py [--quick]

For each framework, the same app is measured with and without the middleware in the
same run, interleaved (so drift of a shared machine hits both alike), best of several
repeats. The view is identical in both apps: it calls ``track()`` when a tracker is
attached, so the "with" figure includes the event (validation, context, serialisation,
enqueue). Scenarios:

- returning user: a browser request with a valid ``atrack_uuid`` cookie and one
  ``track()`` in the view (the SPEC's headline figure; target <= 15 µs added);
- first visit: no cookie, so a uuid is generated, ``/init`` is sent and ``Set-Cookie``
  is added, plus the same ``track()``;
- returning user on a page that tracks nothing: the middleware's own cost.

The SDK (``make_sdk``, shared with ``bench_middleware_wsgi.py``) runs with background
delivery towards a loopback socket that accepts connections and never answers: calls
are validated, serialised and enqueued exactly as in production (the enqueue is in the
timed request), while the senders sit blocked on their sockets instead of competing
for the CPU. The queue holds every call of the run. Nothing reaches any real API.

One function per framework (``bench_starlette`` …) returns rows for the table; Django and
Flask add theirs the same way.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atrack_core import ATrackSdk, Options, _scheduler

COOKIE_UUID = "0d54a1f2-3b4c-4d5e-8f90-123456789abc"
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
# A typical browser navigation (what Chrome sends for a same-site page view).
BROWSER_HEADERS: list[tuple[str, str]] = [
    ("host", "shop.example"),
    ("connection", "keep-alive"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", USER_AGENT),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
    ("referer", "https://shop.example/"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
]
RETURNING_COOKIE = (
    f"_ga=GA1.1.123456789.1700000000; atrack_uuid={COOKIE_UUID}; atrack_tz=Europe%2FBerlin"
)
FIRST_VISIT_COOKIE = "_ga=GA1.1.123456789.1700000000"

Row = tuple[str, float, float]  # scenario, bare µs, with-middleware µs

# (label, cookie header, path): /products tracks an event, /about tracks nothing.
SCENARIOS = [
    ("returning user, cookie + track()", RETURNING_COOKIE, "/products"),
    ("first visit: uuid, /init, Set-Cookie + track()", FIRST_VISIT_COOKIE, "/products"),
    ("returning user, no track() in the view", RETURNING_COOKIE, "/about"),
]


_blackholes: list[socket.socket] = []


def blackhole_url() -> str:
    """A loopback endpoint that accepts connections (into the listen backlog) and never
    answers: senders sit blocked on their sockets, using no CPU, and nothing is sent."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    _blackholes.append(sock)  # kept open for the life of the bench
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def make_sdk() -> ATrackSdk:
    """The SDK every bench uses: background delivery as in production, so each call is
    validated, serialised *and enqueued* in the timed request; a queue large enough
    for every call of the run (no drop path): the 32 MiB cap on queued bodies, which a
    run of 200,000 calls to a socket that never answers would reach, is lifted here."""
    _scheduler.MAX_QUEUE_BYTES = 1 << 40  # read when the SDK is built
    return ATrackSdk(
        Options(
            "pub_bench",
            endpoint=blackhole_url(),
            max_queue_size=10_000_000,
            shutdown_timeout=0.1,
        )
    )


# ---------------------------------------------------------------------------- ASGI


def asgi_scope(cookie: str, path: str = "/products") -> dict[str, Any]:
    headers = [(k.encode(), v.encode()) for k, v in [*BROWSER_HEADERS, ("cookie", cookie)]]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
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


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def time_asgi(
    app: Callable[[dict[str, Any], Any, Any], Awaitable[None]],
    scope: dict[str, Any],
    n: int,
) -> float:
    """µs per request, driving the app directly (no server, no client)."""
    receive, send = _receive, _send
    start = time.perf_counter_ns()
    for _ in range(n):
        # A fresh scope per request, as a server gives: apps and middleware write to it.
        s = scope.copy()
        await app(s, receive, send)
    return (time.perf_counter_ns() - start) / n / 1000


async def compare_asgi(
    bare: Any, tracked: Any, scope: dict[str, Any], n: int, repeats: int
) -> tuple[float, float]:
    for app in (bare, tracked):  # warm caches, routes, lazy imports
        await time_asgi(app, scope, 200)
    bare_runs: list[float] = []
    tracked_runs: list[float] = []
    for _ in range(repeats):
        gc.collect()
        bare_runs.append(await time_asgi(bare, scope, n))
        tracked_runs.append(await time_asgi(tracked, scope, n))
    return min(bare_runs), min(tracked_runs)


def bench_starlette(n: int, repeats: int) -> list[Row]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from atrack_integrations.asgi import ATrackMiddleware

    async def products(request: Request) -> PlainTextResponse:
        # The same view in both apps: it tracks when the middleware is installed.
        tracker = request.scope["state"].get("atrack") if "state" in request.scope else None
        if tracker is not None:
            tracker.track("product_list_viewed", {"page": 2})
        return PlainTextResponse("products")

    async def about(request: Request) -> PlainTextResponse:
        return PlainTextResponse("about")  # a page that tracks nothing

    def build(with_middleware: bool, sdk: ATrackSdk | None) -> Starlette:
        app = Starlette(routes=[Route("/products", products), Route("/about", about)])
        if with_middleware:
            app.add_middleware(ATrackMiddleware, sdk=sdk)
        return app

    sdk = make_sdk()
    rows: list[Row] = []
    try:
        bare, tracked = build(False, None), build(True, sdk)

        async def run() -> None:
            for label, cookie, path in SCENARIOS:
                b, t = await compare_asgi(bare, tracked, asgi_scope(cookie, path), n, repeats)
                rows.append((label, b, t))

        asyncio.run(run())
    finally:
        sdk.shutdown(timeout=0.1)
    return rows


# ---------------------------------------------------------------------------- report


def report(framework: str, rows: list[Row]) -> None:
    for label, bare, tracked in rows:
        print(
            f"{framework:<10} {label:<48} bare {bare:7.2f} µs   with A-Track {tracked:7.2f} µs"
            f"   added {tracked - bare:6.2f} µs"
        )


BENCHES: dict[str, Callable[[int, int], list[Row]]] = {
    "starlette": bench_starlette,
}


def main(argv: list[str], benches: dict[str, Callable[[int, int], list[Row]]] | None = None) -> int:
    """Run ``benches`` (default: this module's) and print one report line per row."""
    quick = "--quick" in argv
    n, repeats = (2_000, 3) if quick else (10_000, 7)
    print(f"Python {sys.version.split()[0]}; {n} requests x {repeats} repeats, best run")
    for name, fn in (BENCHES if benches is None else benches).items():
        try:
            rows = fn(n, repeats)
        except ImportError as exc:
            print(f"{name:<10} skipped: {exc}")
            continue
        report(name, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
