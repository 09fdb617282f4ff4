"""SIGTERM under every supported server: nothing queued may be lost.

Per server: a real server process with a small app behind the A-Track middleware
(``tests/deploy/shutdown_apps.py``; the Django shop for Django), 100 requests from
new visitors (an ``/init`` and a ``hit`` event each) while the API answers after
``LATENCY`` (an event waits for its user's ``/init``, so calls are still queued), then
SIGTERM to the server's master and a count of what arrived at the API. Whatever hook
the server gives the SDK (the ASGI lifespan, ``atexit``, or none: the SDK's SIGTERM
flush), every call must arrive. The figures printed feed docs/deployment.md.
"""

from __future__ import annotations

import collections
import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import ROOT, Server, StartServer
from tests.fake_api import FakeApi, Plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

REQUESTS = 100
LATENCY = 0.5
CALLS = 2 * REQUESTS  # an /init and an event per request
WSGI = "tests.deploy.shutdown_apps:wsgi_app"
ASGI = "tests.deploy.shutdown_apps:asgi_app"
HOST = ["--host", "127.0.0.1", "--port", "{port}"]
GRANIAN = [*HOST, "--workers", "1", "--interface"]
# Each gunicorn worker logs "Worker ready" once its signal handlers are in (a SIGTERM
# before then is lost by gunicorn itself: the worker serves on until the timeout).
READY = ["-c", "python:tests.deploy.gunicorn_ready"]
WORKERS = 2  # -w in each gunicorn entry below

# server id -> (kind, args, needs)
SERVERS: dict[str, tuple[str, list[str], str]] = {
    "uvicorn": ("python -m uvicorn", [*HOST, ASGI], "uvicorn"),
    "gunicorn-sync": ("gunicorn", [*READY, "-k", "sync", "-w", str(WORKERS), WSGI], "gunicorn"),
    "gunicorn-gthread": (
        "gunicorn",
        [*READY, "-k", "gthread", "--threads", "4", "-w", str(WORKERS), WSGI],
        "gunicorn",
    ),
    "gunicorn-gevent": ("gunicorn", [*READY, "-k", "gevent", "-w", str(WORKERS), WSGI], "gevent"),
    "gunicorn-uvicorn-worker": (
        "gunicorn",
        [*READY, "-k", "uvicorn_worker.UvicornWorker", "-w", str(WORKERS), ASGI],
        "uvicorn_worker",
    ),
    "hypercorn-asyncio": (
        "python -m hypercorn",
        ["-b", "127.0.0.1:{port}", "-k", "asyncio", ASGI],
        "hypercorn",
    ),
    "hypercorn-trio": (
        "python -m hypercorn",
        ["-b", "127.0.0.1:{port}", "-k", "trio", ASGI],
        "trio",
    ),
    "daphne": ("python -m daphne", ["-b", "127.0.0.1", "-p", "{port}", ASGI], "daphne"),
    "waitress": ("python -m waitress", ["--host=127.0.0.1", "--port={port}", WSGI], "waitress"),
    "granian-asgi": ("python -m granian", [*GRANIAN, "asgi", ASGI], "granian"),
    "granian-asgi-no-lifespan": ("python -m granian", [*GRANIAN, "asginl", ASGI], "granian"),
    "granian-wsgi": ("python -m granian", [*GRANIAN, "wsgi", WSGI], "granian"),
    "django-granian": (
        "python -m granian",
        [*GRANIAN, "asginl", "shop.asgi:application"],
        "granian",
    ),
}


def send_traffic(server: Server, path: str) -> None:
    def one(n: int) -> int:
        # A new connection and no cookie: a new visitor each time (an /init each).
        params: dict[str, str | int] = {"n": n, "source": f"s{n}"}
        return httpx.get(f"{server.url}{path}", params=params, timeout=10).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(one, range(REQUESTS)))
    if statuses != [200] * REQUESTS:
        server.fail(f"statuses {collections.Counter(statuses)}")


def shut_down(
    start_server: StartServer, fake_api: FakeApi, name: str, *, sigterm_flush: bool = True
) -> tuple[Server, dict[str, Any]]:
    """Start server ``name`` (``-httpx``: with the httpx transport, else ``"auto"``:
    libcurl), send the traffic, SIGTERM; what arrived."""
    kind, args, needs = SERVERS[name.removesuffix("-httpx")]
    pytest.importorskip(needs)
    env = {"ATRACK_TEST_ENDPOINT": fake_api.url}
    if name.endswith("-httpx"):
        env["ATRACK_TEST_TRANSPORT"] = "httpx"
    if not sigterm_flush:
        env["ATRACK_SIGTERM_FLUSH"] = "0"
    django = name.startswith("django")
    if django:
        pytest.importorskip("django")
        env.update(
            PYTHONPATH=f"{ROOT}:{ROOT / 'example_apps' / 'django_shop'}",
            DJANGO_SETTINGS_MODULE="shop.settings",
            ATRACK_PUBLIC_KEY="pub_shutdown_test_5150",
            ATRACK_ENDPOINT=fake_api.url,
            DJANGO_DEBUG="0",
        )
    fake_api.latency = LATENCY
    server = start_server(args, env, kind=kind)
    server.wait_ready()
    if READY[1] in args:
        server.wait_log("Worker ready", WORKERS)
    send_traffic(server, "/" if django else "/hit")
    at_sigterm = len(fake_api.received)
    code = server.terminate()
    with contextlib.suppress(AssertionError):  # counted below
        fake_api.wait_for(CALLS, timeout=3 if sigterm_flush else 0.5)
    received = list(fake_api.received)
    ids = collections.Counter(r.headers["x-a-track-request-id"] for r in received)
    result = {
        "at_sigterm": at_sigterm,
        "delivered": len(ids),
        "inits": sum(1 for r in received if r.path == "/init"),
        "events": sum(1 for r in received if r.path == "/event"),
        "most_copies": max(ids.values(), default=0),
        "exit_s": round(server.exit_seconds or 0.0, 2),
        "exit_code": code,
    }
    print(f"\n{name}{'' if sigterm_flush else ' (ATRACK_SIGTERM_FLUSH=0)'}: {result}")
    return server, result


# The SIGTERM flush and a plain exit flush, also through the pure-Python transport.
@pytest.mark.parametrize("name", [*SERVERS, "waitress-httpx", "gunicorn-sync-httpx"])
def test_sigterm_loses_no_call(start_server: StartServer, fake_api: FakeApi, name: str) -> None:
    server, result = shut_down(start_server, fake_api, name)
    if (result["delivered"], result["inits"], result["events"]) != (CALLS, REQUESTS, REQUESTS):
        server.fail(f"{name}: {result['delivered']} of {CALLS} calls arrived: {result}")
    assert result["at_sigterm"] < CALLS, "nothing was queued at SIGTERM: this proves nothing"
    assert result["most_copies"] == 1


def test_waitress_without_the_sigterm_flush_loses_calls(
    start_server: StartServer, fake_api: FakeApi
) -> None:
    """Why the SIGTERM flush exists: waitress never runs ``atexit`` on SIGTERM."""
    _, result = shut_down(start_server, fake_api, "waitress", sigterm_flush=False)
    assert result["at_sigterm"] < CALLS
    assert result["delivered"] < CALLS
    assert result["exit_code"] == -signal.SIGTERM


# Servers that flush at the ASGI lifespan's shutdown and then again at exit (atexit).
LIFESPAN_THEN_EXIT = ["uvicorn", "hypercorn-asyncio", "gunicorn-uvicorn-worker"]


@pytest.mark.parametrize("name", LIFESPAN_THEN_EXIT)
def test_an_api_that_never_answers_holds_the_exit_one_shutdown_timeout(
    start_server: StartServer, fake_api: FakeApi, name: str
) -> None:
    """The lifespan's flush and the exit flush after it share one deadline: a server
    whose API never answers ends within ``shutdown_timeout`` of its stop, not twice
    that (each flush waiting its own; uvicorn took 11.7 s with the default 5 s)."""
    kind, args, needs = SERVERS[name]
    pytest.importorskip(needs)
    budget = 3.0
    fake_api.default = Plan(hang=True)
    env = {"ATRACK_TEST_ENDPOINT": fake_api.url, "ATRACK_TEST_SHUTDOWN_TIMEOUT": str(budget)}
    server = start_server(args, env, kind=kind)
    server.wait_ready()
    if READY[1] in args:
        server.wait_log("Worker ready", WORKERS)
    send_traffic(server, "/hit")
    server.terminate()
    took = server.exit_seconds or 0.0
    print(f"\n{name}, API never answering, shutdown_timeout {budget} s: exit {took:.2f} s")
    # Twice the budget is 6 s; the server's own stop and the interpreter's end take
    # well under a second on a quiet machine.
    if not budget * 0.8 < took < budget + 2.0:
        server.fail(f"{name} ended {took:.2f} s after SIGTERM (shutdown_timeout {budget} s)")
    # What could not be delivered is said, once per process.
    assert "not delivered" in server.output(), server.output()
