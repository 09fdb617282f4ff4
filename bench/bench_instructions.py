"""Instructions A-Track adds to one request (callgrind), without a web framework.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_instructions.py [--quick] [--src DIR ...]

Time per request on a shared, loaded machine moves by tens of percent between runs;
instruction counts do not. The middleware's work is the same under every framework (the
issue measured ~120k instructions in Django, Flask and Starlette alike), so it is
counted around the plainest app: a one-line WSGI app inside ``ATrackWSGIMiddleware``
and a one-line ASGI app inside ``ATrackMiddleware``, for the scenarios of
``bench_middleware.SCENARIOS``, bare and tracked.

Each figure is ``(Ir(N2) - Ir(N1)) / (N2 - N1)`` from two runs of the same process
under ``valgrind --tool=callgrind`` (start-up cancels out), every thread included (the
SDK's sender sits blocked on a loopback socket that never answers, as in
``bench_middleware``). ``--src DIR`` runs the same measurement with ``DIR`` first on
``sys.path`` (another checkout, e.g. the commit before a change): side by side, in one
run.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N1, N2 = 300, 1300
KINDS = ("wsgi", "asgi")
QUICK_N = (100, 500)  # --quick: fewer requests, the first scenario only


def child(kind: str, scenario: int, tracked: bool, n: int) -> None:
    sys.path.insert(0, str(HERE))
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
            wsgi(environ.copy(), start_response)
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
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", kind, str(scenario), str(int(tracked)), str(n),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(out[-2000:])
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
    n = QUICK_N if quick else (N1, N2)
    sys.path.insert(0, str(HERE))
    from bench_middleware import SCENARIOS

    print(f"Python {sys.version.split()[0]}; instructions per request (callgrind), added")
    for kind in KINDS:
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
