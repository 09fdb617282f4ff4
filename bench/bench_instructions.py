"""Instructions A-Track adds to one request (callgrind), without a web framework.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_instructions.py [--quick] [--src DIR ...]

Time per request on a shared, loaded machine moves by tens of percent between runs;
instruction counts do not. The middleware's work is the same under every framework (the
issue measured ~120k instructions in Django, Flask and Starlette alike), so it is
counted around the plainest app: a one-line WSGI app inside ``ATrackWSGIMiddleware``
and a one-line ASGI app inside ``ATrackMiddleware``, and around a two-view Flask app
(the extension's own share), Django's ``WSGIHandler`` (``--kinds django``, as in
``bench_middleware_wsgi``) and Django's async mode (``--kinds django-async``: an
``ASGIRequest`` through the middleware to an async view, as in
``bench_middleware_wsgi``), for the scenarios of ``bench_middleware.SCENARIOS``, bare
and tracked. ``--kinds wsgi,flask`` picks some. Each WSGI response body is iterated
and closed, as a server does (and ``bench_middleware_wsgi``); before 2026-12-04's fourth
pass the Flask and Django bodies were closed without being iterated.

Each figure is ``(Ir(N2) - Ir(N1)) / (N2 - N1)`` from two runs of the same process
under ``valgrind --tool=callgrind`` (start-up cancels out), counting the main thread,
where the requests run (the SDK's sender thread, pointed at a loopback socket that
never answers as in ``bench_middleware``, works by the clock and would add noise; the
enqueue each call makes is counted). The children run with ``PYTHONHASHSEED=0`` (unless
set): with random string hashes, dict and set probes differ from run to run and so did
the figures (one 20-character name check: 0.5k or 1.7k instructions). ``--src DIR``
runs the same measurement with ``DIR`` first on ``sys.path`` (another checkout, e.g.
the commit before a change, made with ``git worktree add``): side by side, in one run.
``--no-gc`` leaves the garbage collector's share out (see ``NO_GC``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N1, N2 = 300, 1300
KINDS = ("wsgi", "asgi", "flask")
QUICK_N = (100, 500)  # --quick: fewer requests, the first scenario only
# --no-gc: the children run with the cyclic garbage collector off. The calls queued
# towards a socket that never answers pile up in the heap, and whether one more full
# collection falls between N1 and N2 requests moves a Flask or Django figure by several
# thousand instructions between checkouts that differ by a few allocations.
NO_GC = False


def child(kind: str, scenario: int, tracked: bool, n: int) -> None:
    if os.environ.get("BENCH_NO_GC"):
        import gc

        gc.disable()
    # The checkout under test first, imported before bench_middleware (which puts this
    # checkout at the front of sys.path): its modules are the ones in sys.modules.
    sys.path.insert(0, os.environ["BENCH_SRC"])
    import atrack_core
    import atrack_integrations

    for module in (atrack_core, atrack_integrations):
        assert (module.__file__ or "").startswith(os.environ["BENCH_SRC"]), module.__file__
    sys.path.insert(1, str(HERE))
    from bench_middleware import BROWSER_HEADERS, SCENARIOS, asgi_scope, make_sdk

    _, cookie, path = SCENARIOS[scenario]
    sdk = make_sdk()
    if kind == "wsgi":
        from atrack_integrations.wsgi import ATrackWSGIMiddleware

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            tracker = environ.get("atrack.tracker") or environ.get("atrack")
            if tracker is not None and environ["PATH_INFO"] == "/products":
                tracker.track("product_list_viewed", {"page": 2})
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"products"]

        environ = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": "source=google&page=2", "SERVER_NAME": "shop.example",
            "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "134.122.17.144",
            "wsgi.url_scheme": "https",
            **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in BROWSER_HEADERS},
            "HTTP_COOKIE": cookie,
        }  # fmt: skip
        wsgi = ATrackWSGIMiddleware(app, sdk=sdk) if tracked else app

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            return None

        for _ in range(n):
            for _chunk in wsgi(environ.copy(), start_response):  # as a server does
                pass
    elif kind == "flask":
        import flask

        from atrack_integrations.flask import ATrack

        flask_app = flask.Flask(__name__)
        if tracked:
            ATrack(flask_app, sdk=sdk)

        @flask_app.get("/products")
        def products() -> str:
            tracker = getattr(flask.request, "atrack", None)
            if tracker is not None:
                tracker.track("product_list_viewed", {"page": 2})
            return "products"

        @flask_app.get("/about")
        def about() -> str:
            return "about"

        from bench_middleware_wsgi import wsgi_environ

        environ = wsgi_environ(cookie, path)

        def flask_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            return None

        for _ in range(n):
            body = flask_app.wsgi_app(environ.copy(), flask_start_response)
            for _chunk in body:  # as a server does (and bench_middleware_wsgi)
                pass
            body.close()  # type: ignore[attr-defined]
    elif kind == "django":
        import bench_middleware_wsgi as django_bench

        django_bench._django_setup()
        chain = django_bench.TRACKED_MIDDLEWARE if tracked else django_bench.BARE_MIDDLEWARE
        handler = django_bench._django_handler(chain)
        environ = django_bench.wsgi_environ(cookie, path)

        def django_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            return None

        import io

        for _ in range(n):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO()
            result = handler(env, django_start_response)
            for _chunk in result:  # as a server does (and bench_middleware_wsgi)
                pass
            result.close()
    elif kind == "django-async":
        # bench_middleware_wsgi's async mode: an ASGIRequest per request, the middleware
        # (async mode) over an async view, against the view alone.
        import io

        import bench_middleware_wsgi as django_bench
        from django.core.handlers.asgi import ASGIRequest

        from atrack_integrations.django import ATrackMiddleware

        django_bench._django_setup()

        async def django_view(request: Any) -> Any:
            if request.path == "/products":
                return django_bench.products(request)
            return django_bench.about(request)

        django_app = ATrackMiddleware(django_view) if tracked else django_view
        django_scope = asgi_scope(cookie, path)

        async def run_django() -> None:
            for _ in range(n):
                await django_app(ASGIRequest(django_scope, io.BytesIO()))

        asyncio.run(run_django())
    else:
        from atrack_integrations.asgi import ATrackMiddleware

        async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            state = scope.get("state")
            tracker = state.get("atrack") if state else None
            if tracker is not None and scope["path"] == "/products":
                tracker.track("product_list_viewed", {"page": 2})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"products"})

        scope = asgi_scope(cookie, path)
        target = ATrackMiddleware(asgi_app, sdk=sdk) if tracked else asgi_app

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: dict[str, Any]) -> None:
            return None

        async def run() -> None:
            for _ in range(n):
                await target(scope.copy(), receive, send)

        asyncio.run(run())
    os._exit(0)  # no exit flush: its instructions are not the request's


def instructions(src: str, kind: str, scenario: int, tracked: bool, n: int) -> int:
    """Instructions of the main thread (where requests run): the SDK's sender thread
    works by the clock (connect attempts, backoff), so counting it would add noise."""
    env = {"PYTHONHASHSEED": "0", **os.environ, "BENCH_SRC": src}
    if NO_GC:
        env["BENCH_NO_GC"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", kind, str(scenario), str(int(tracked)), str(n),
        ]  # fmt: skip
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        main = Path(out + "-01").read_text()
    match = re.search(r"^(?:summary|totals): (\d+)", main, re.MULTILINE)
    if match is None:
        raise RuntimeError(main[-2000:])
    return int(match.group(1))


def per_request(src: str, kind: str, scenario: int, tracked: bool, n: tuple[int, int]) -> float:
    low = instructions(src, kind, scenario, tracked, n[0])
    high = instructions(src, kind, scenario, tracked, n[1])
    return (high - low) / (n[1] - n[0])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), argv[3] == "1", int(argv[4]))
        return 0
    sources = [str(ROOT)]
    while "--src" in argv:
        at = argv.index("--src")
        sources.append(str(Path(argv[at + 1]).resolve()))
        del argv[at : at + 2]
    quick = "--quick" in argv
    global NO_GC
    NO_GC = "--no-gc" in argv
    n = QUICK_N if quick else (N1, N2)
    sys.path.insert(0, str(HERE))
    from bench_middleware import SCENARIOS

    print(f"Python {sys.version.split()[0]}; instructions per request (callgrind), added")
    kinds = KINDS
    if "--kinds" in argv:
        kinds = tuple(argv[argv.index("--kinds") + 1].split(","))
    for kind in kinds:
        for index, (label, _, _) in enumerate(SCENARIOS[:1] if quick else SCENARIOS):
            figures = []
            for src in sources:
                bare = per_request(src, kind, index, False, n)
                tracked = per_request(src, kind, index, True, n)
                figures.append(f"{Path(src).name}: {(tracked - bare) / 1000:6.1f}k")
            print(f"{kind:<5} {label:<48} " + "   ".join(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
