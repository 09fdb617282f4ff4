"""Real servers on loopback for the WSGI-family tests (plain WSGI, Flask, Django).

``serve()`` starts gunicorn or uvicorn in a subprocess and waits until it answers;
``create_app()`` is the plain WSGI app gunicorn runs for the tests in this module.
Flask and Django tests import ``serve`` and ``client_session`` from here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from tests.fake_api import FakeApi, Plan
from tests.gunicorn_args import no_control_socket

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class LogGuard:
    """Errors the middleware logged (and swallowed) fail the test, unless it says it
    provokes them: containment must never hide a bug."""

    def __init__(self) -> None:
        self.errors_expected = False

    def expect_errors(self) -> None:
        self.errors_expected = True


@pytest.fixture(autouse=True)
def atrack_log_guard(caplog: pytest.LogCaptureFixture) -> Iterator[LogGuard]:
    """Autouse here; imported by the Flask tests and the Django conftest."""
    guard = LogGuard()
    yield guard
    if not guard.errors_expected:
        errors = [
            r
            for r in caplog.get_records("call")
            if r.name.startswith("atrack") and r.levelno >= logging.ERROR
        ]
        assert not errors, "A-Track logged errors: " + "; ".join(
            r.getMessage() + (f" ({r.exc_info[1]!r})" if r.exc_info else "") for r in errors
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    kind: str,
    target: str,
    env: Mapping[str, str],
    *,
    threads: int = 32,
    args: Sequence[str] = (),
) -> Iterator[int]:
    """Run ``target`` under ``kind`` ("gunicorn", "uvicorn", or "runserver": ``target`` is
    a Django ``manage.py``) on a free loopback port; yield the port. ``args`` go to the
    server's command line. The process is stopped with SIGTERM (exit flushes run)."""
    port = free_port()
    if kind == "runserver":
        cmd = [sys.executable, target, "runserver", "--noreload", f"127.0.0.1:{port}", *args]
    elif kind == "gunicorn":
        pytest.importorskip("gunicorn")
        cmd = [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", "1", "--worker-class", "gthread", "--threads", str(threads),
            "--graceful-timeout", "5", "--log-level", "warning", *no_control_socket(),
            *args, target,
        ]  # fmt: skip
    elif kind == "uvicorn":
        pytest.importorskip("uvicorn")
        cmd = [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--lifespan", "off",
            # uvicorn believes X-Forwarded-For from 127.0.0.1 by default; the tests
            # check what the middleware does with a forged one, so switch that off.
            "--no-proxy-headers", *args, target,
        ]  # fmt: skip
    else:
        raise ValueError(kind)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"{kind} exited with {proc.returncode}:\n{out}")
            try:
                status, _, _ = request(port, "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} did not answer on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        if own:
            conn.close()


def set_cookie_value(headers: http.client.HTTPMessage, name: str = "atrack_uuid") -> str | None:
    for value in headers.get_all("Set-Cookie") or []:
        jar: SimpleCookie = SimpleCookie()
        jar.load(value)
        if name in jar:
            return jar[name].value
    return None


def client_session(port: int, path: str, rounds: int, tag: str) -> tuple[str, list[str]]:
    """One browser: a first request gets a cookie, then ``rounds`` requests send it.
    Returns the cookie's uuid and the uuids the app reported back."""
    status, headers, body = request(port, f"{path}?tag={tag}")
    assert status == 200, body
    uuid = set_cookie_value(headers)
    assert uuid is not None
    seen = [json.loads(body)["uuid"]]
    for _ in range(rounds):
        status, headers, body = request(
            port, f"{path}?tag={tag}", headers={"Cookie": f"atrack_uuid={uuid}"}
        )
        assert status == 200, body
        assert set_cookie_value(headers) is None  # a returning user gets no new cookie
        seen.append(json.loads(body)["uuid"])
    return uuid, seen


def check_isolation(port: int, api: FakeApi, path: str, clients: int = 30, rounds: int = 3) -> None:
    """``clients`` browsers at once, each with its own cookie: every response and every
    event carries that browser's own uuid, and each browser is initialised once."""
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(
            pool.map(lambda i: client_session(port, path, rounds, f"c{i}"), range(clients))
        )
    uuids = {}
    for i, (uuid, seen) in enumerate(results):
        assert seen == [uuid] * (rounds + 1)
        uuids[f"c{i}"] = uuid
    assert len(set(uuids.values())) == clients
    received = api.wait_for(clients * (rounds + 1) + clients)
    events = [r.body for r in received if r.path == "/event"]
    inits = [r.body for r in received if r.path == "/init"]
    assert len(events) == clients * (rounds + 1)
    for body in events:
        assert body["uuid"] == uuids[body["attributes"]["tag"]]
        assert body["context"]["url"].endswith(f"tag={body['attributes']['tag']}")
    assert sorted(b["uuid"] for b in inits) == sorted(uuids.values())


# --------------------------------------------------------------------------- plain WSGI app


def create_app() -> Any:
    """The WSGI app gunicorn serves here (``module:create_app()``), configured from
    ``ATRACK_*`` environment variables like a real deployment."""
    import threading

    from atrack_integrations.wsgi import ATrackWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/health":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        tracker = environ["atrack.tracker"]
        tag = environ.get("QUERY_STRING", "").partition("tag=")[2]
        # A short sleep interleaves the threads, so shared per-request state would show.
        threading.Event().wait(0.005)
        tracker.track("slow_event", {"tag": tag})
        body = json.dumps({"uuid": tracker.uuid, "is_new_user": tracker.is_new_user})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]

    return ATrackWSGIMiddleware(app)


@pytest.mark.slow
def test_gunicorn_threads_each_see_their_own_user(fake_api: FakeApi) -> None:
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    target = "tests.integrations.test_wsgi_servers:create_app()"
    with serve("gunicorn", target, env) as port:
        check_isolation(port, fake_api, "/slow")


@pytest.mark.slow
def test_gunicorn_api_hanging_does_not_slow_requests(fake_api: FakeApi) -> None:
    # An API that never answers: each attempt ends at the SDK's 5 s timeout, so a request
    # that waited on it even once would take 5 s. Each request must answer within 4 s
    # (its real cost is milliseconds): a bound per request, far from both, so a loaded
    # machine does not make it flaky. The socket timeout enforces it.
    fake_api.default = Plan(hang=True)
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    target = "tests.integrations.test_wsgi_servers:create_app()"
    with serve("gunicorn", target, env) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
        for i in range(20):
            status, _, _ = request(port, f"/slow?tag=t{i}", conn=conn)
            assert status == 200
        conn.close()
        # The SDK did call the API while the requests were answered.
        assert fake_api.wait_for(1)


@pytest.mark.slow
def test_gunicorn_worker_flushes_at_exit(fake_api: FakeApi) -> None:
    # The API answers after 1 s: the calls of the request are still in flight when the
    # server is told to stop, and the worker's exit flush must deliver them.
    fake_api.latency = 1.0
    env = {"ATRACK_PUBLIC_KEY": "pub_test_key_1234", "ATRACK_ENDPOINT": fake_api.url}
    target = "tests.integrations.test_wsgi_servers:create_app()"
    with serve("gunicorn", target, env) as port:
        status, _, _ = request(port, "/slow?tag=exit")
        assert status == 200
    # serve() has sent SIGTERM and waited for the process to exit.
    received = fake_api.wait_for(2, timeout=1.0)
    assert sorted(r.path for r in received) == ["/event", "/init"]
