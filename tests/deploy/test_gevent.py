"""gevent: a real gunicorn gevent worker, with and without ``--preload`` (the SDK built
in the master before the worker monkey-patches), and monkey-patched scripts (patched
before or after the SDK was built). Nothing may deadlock; every event arrives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import ROOT, StartServer
from tests.fake_api import FakeApi

pytest.importorskip("gevent")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("transport", ["httpx", "curl"])
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_gevent_worker_delivers_without_deadlock(
    start_server: StartServer, fake_api: FakeApi, transport: str, preload: bool
) -> None:
    args = ["-k", "gevent", "--workers", "2", "--timeout", "20"]
    args += ["-c", "python:tests.deploy.gunicorn_ready"]
    if preload:
        args.append("--preload")
    env = {
        "ATRACK_TEST_ENDPOINT": fake_api.url,
        "ATRACK_TEST_TRANSPORT": transport,
        "PYTHONFAULTHANDLER": "1",  # SIGABRT (below) prints where a stuck process is
    }
    server = start_server([*args, "tests.deploy.gevent_app:app"], env)
    server.wait_ready()
    # Both workers, not just the first: a SIGTERM to one still booting (patching) is
    # lost by gunicorn itself, and that worker serves on until the graceful timeout.
    server.wait_log("Worker ready", 2)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in range(30):
            # A deadlocked worker never answers: the timeout fails the test.
            assert client.get(f"/page-{n}").status_code == 200
        assert client.get("/flush").status_code == 200
    received = fake_api.wait_for(31, timeout=20)
    paths = sorted(r.body["attributes"]["path"] for r in received)
    assert paths == sorted([f"/page-{n}" for n in range(30)] + ["/flush"])
    try:
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGABRT)
        server.proc.wait(10)
        server.fail("gunicorn did not exit within 30 s of SIGTERM (stacks above)")
    assert code == 0, server.output()
    assert "WORKER TIMEOUT" not in server.output(100_000)


SCRIPT = textwrap.dedent(
    """
    import sys
    patch_first = sys.argv[3] == "before"
    if patch_first:
        from gevent import monkey; monkey.patch_all()
    from atrack_core import ATrackSdk, Options
    sdk = ATrackSdk(Options("pub_gevent_test_1234", endpoint=sys.argv[1], transport=sys.argv[2]))
    if not patch_first:
        # Built at import, patched in main() (gevent wants patching before any thread
        # exists: the SDK has none until its first call).
        from gevent import monkey; monkey.patch_all()
    import gevent
    sdk.track("built", uuid="script")

    def work(n):
        for i in range(10):
            sdk.track("e", {"n": n, "i": i}, uuid=f"g{n}")
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(work, n) for n in range(5)])
    assert sdk.flush(15), sdk.stats()
    print("sent", sdk.stats()["sent"], flush=True)
    # Sync mode: "auto" picks httpx once patched (libcurl's perform() would block the hub).
    from atrack_core._delivery import choose_transport
    print("sync-auto", choose_transport("auto", sync=True).name, flush=True)
    sync = ATrackSdk(Options("pub_gevent_test_1234", endpoint=sys.argv[1], delivery="sync"))
    gevent.joinall([gevent.spawn(sync.track, "sync", uuid=f"s{n}") for n in range(3)])
    """
)


@pytest.mark.parametrize("transport", ["httpx", "curl"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_monkey_patched_scripts_deliver(fake_api: FakeApi, transport: str, when: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, fake_api.url, transport, when],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(ROOT),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["sent", "51", "sync-auto", "httpx"]
    assert len(fake_api.received) == 54
