"""Micro-benchmark: what making the tracker current (``current_tracker()``) costs a request.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_current.py [--quick]

Side by side in one run, interleaved, best batch of each:

- the bare pair the adapters run per request, ``token = CURRENT.set(t)`` then
  ``CURRENT.reset(token)`` in a ``try/finally``, against the same loop without it;
- the ASGI middleware (returning user, a view that tracks nothing) with the real
  context variable, against the same middleware with the variable swapped for a stub
  whose ``set``/``reset`` do nothing (what is left is the variable's own cost, less one
  no-op method call each);
- the WSGI middleware over a list body (returned as it is: only the set/reset around
  the app call), and over a generator body (one chunk), with the real variable and
  body wrapper (``active_body``: set/reset around each
  chunk and the close), against both stubbed out.

The issue's bound: < 0.5 µs per request.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_middleware import COOKIE_UUID, asgi_scope, make_sdk
from bench_middleware_wsgi import wsgi_environ

import atrack_integrations.asgi as asgi_module
import atrack_integrations.wsgi as wsgi_module
from atrack_integrations._current import CURRENT

BATCH = 2000


class _StubVar:
    """Stands in for the context variable: the same calls, doing nothing."""

    def set(self, value: Any) -> None:
        return None

    def reset(self, token: Any) -> None:
        return None


def _best(
    fn_a: Callable[[int], float], fn_b: Callable[[int], float], n: int, repeats: int
) -> tuple[float, float]:
    """Best µs per request of each, batches interleaved (a, b, a, b …)."""
    best_a = best_b = float("inf")
    for _ in range(repeats):
        for _ in range(max(1, n // BATCH)):
            gc.collect()
            best_a = min(best_a, fn_a(BATCH))
            best_b = min(best_b, fn_b(BATCH))
    return best_a, best_b


def bench_pair(n: int, repeats: int) -> tuple[float, float]:
    tracker = object()

    def with_var(k: int) -> float:
        var = CURRENT
        start = time.perf_counter_ns()
        for _ in range(k):
            token = var.set(tracker)  # type: ignore[arg-type]
            try:
                pass
            finally:
                var.reset(token)
        return (time.perf_counter_ns() - start) / k / 1000

    def without(k: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(k):
            try:
                pass
            finally:
                pass
        return (time.perf_counter_ns() - start) / k / 1000

    return _best(with_var, without, n, repeats)


def bench_asgi(n: int, repeats: int) -> tuple[float, float]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sdk = make_sdk()
    middleware = asgi_module.ATrackMiddleware(app, sdk=sdk, init="off")
    cookie = f"atrack_uuid={COOKIE_UUID}"
    scope = asgi_scope(cookie, "/about")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    loop = asyncio.new_event_loop()

    async def run(k: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(k):
            await middleware({**scope, "state": {}}, receive, send)
        return (time.perf_counter_ns() - start) / k / 1000

    def real(k: int) -> float:
        asgi_module.CURRENT = CURRENT
        return loop.run_until_complete(run(k))

    def stub(k: int) -> float:
        asgi_module.CURRENT = _StubVar()  # type: ignore[assignment]
        try:
            return loop.run_until_complete(run(k))
        finally:
            asgi_module.CURRENT = CURRENT

    try:
        return _best(real, stub, n, repeats)
    finally:
        loop.close()
        sdk.shutdown(0.1)


def bench_wsgi(n: int, repeats: int, *, generator: bool = True) -> tuple[float, float]:
    def gen_app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"ok"

    def list_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app: Any = gen_app if generator else list_app

    sdk = make_sdk()
    middleware = wsgi_module.ATrackWSGIMiddleware(app, sdk=sdk, init="off")
    environ = wsgi_environ(f"atrack_uuid={COOKIE_UUID}", "/about")
    real_active_body = middleware._active_body

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def run(k: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(k):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO()
            result = middleware(env, start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return (time.perf_counter_ns() - start) / k / 1000

    def real(k: int) -> float:
        return run(k)

    def stub(k: int) -> float:
        wsgi_module.CURRENT = _StubVar()  # type: ignore[assignment]
        middleware._active_body = lambda body, tracker, environ: body
        try:
            return run(k)
        finally:
            wsgi_module.CURRENT = CURRENT
            middleware._active_body = real_active_body

    try:
        return _best(real, stub, n, repeats)
    finally:
        sdk.shutdown(0.1)


def main() -> None:
    quick = "--quick" in sys.argv
    n, repeats = (20_000, 3) if quick else (100_000, 5)
    load = os.getloadavg()[0]
    print(f"current_tracker() cost per request (best batch of {BATCH}; load average {load:.2f})")
    print(f"{'what':<52} {'with':>8} {'without':>8} {'added':>8}")
    for label, bench in (
        ("CURRENT.set + reset (try/finally), bare", bench_pair),
        ("ASGI middleware, returning user, no track()", bench_asgi),
        ("WSGI middleware, list body (not wrapped)", partial(bench_wsgi, generator=False)),
        ("WSGI middleware, generator body (wrapped)", bench_wsgi),
    ):
        with_us, without_us = bench(n, repeats)
        print(f"{label:<52} {with_us:>7.3f}µ {without_us:>7.3f}µ {with_us - without_us:>7.3f}µ")


if __name__ == "__main__":
    main()
