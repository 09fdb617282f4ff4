"""SIGTERM under waitress and granian with an outbox, when the exit flush cannot
deliver everything: every call arrives once the app starts again.

Two ways a SIGTERM leaves calls undelivered, each with the servers that never run
``atexit`` (waitress, granian) and so depend on the SDK's own SIGTERM flush:

- ``short-flush``: the SIGTERM flush runs but its ``shutdown_timeout`` (0.2 s) is
  shorter than the API's answers (0.5 s): what is left is written to the outbox as the
  SDK closes.
- ``no-flush`` (waitress): ``ATRACK_SIGTERM_FLUSH=0``, so SIGTERM kills the process at
  once, like a server without any exit hook (granian's workers still exit through
  Python's ``atexit``, so they are the ``short-flush`` case). SIGTERM is sent once the
  outbox holds every call (``atrack outbox inspect``): only the last group commit
  (<= 50 ms) can be lost to an instant kill, see docs/outbox.md.

Then the same server starts again on the same outbox, adopts the file and delivers:
the fake API sees every call, each request id counted once.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, StartServer
from tests.deploy.test_server_shutdown import CALLS, LATENCY, SERVERS, send_traffic
from tests.fake_api import FakeApi

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def pending_in(outbox: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "atrack_core", "outbox", "inspect", "--json", str(outbox)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(entry.get("pending", 0) for entry in json.loads(out))


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("waitress", "short-flush"),
        ("waitress", "no-flush"),
        ("granian-wsgi", "short-flush"),
        ("granian-asgi", "short-flush"),
        ("granian-asgi-no-lifespan", "short-flush"),
    ],
)
def test_calls_left_at_sigterm_arrive_after_a_restart(
    tmp_path: Path, start_server: StartServer, fake_api: FakeApi, name: str, mode: str
) -> None:
    kind, args, needs = SERVERS[name]
    pytest.importorskip(needs)
    outbox = tmp_path / "outbox"
    env = {"ATRACK_TEST_ENDPOINT": fake_api.url, "ATRACK_TEST_OUTBOX": str(outbox)}
    if mode == "short-flush":
        env["ATRACK_TEST_SHUTDOWN_TIMEOUT"] = "0.2"
    else:
        env["ATRACK_SIGTERM_FLUSH"] = "0"
    # no-flush: slow enough that the users' events are still queued behind their
    # /init when the outbox holds everything and SIGTERM comes.
    fake_api.latency = LATENCY if mode == "short-flush" else 3.0
    first = start_server(args, env, kind=kind)
    first.wait_ready()
    send_traffic(first, "/hit")
    if mode == "no-flush":
        deadline = time.monotonic() + 10
        while len(fake_api.received) + pending_in(outbox) < CALLS:
            if time.monotonic() > deadline:
                first.fail("the outbox never held the calls")
            time.sleep(0.05)
    first.terminate()
    at_exit = len({r.headers["x-a-track-request-id"] for r in fake_api.received})
    left = pending_in(outbox)
    assert at_exit < CALLS, "everything arrived before the restart: this proves nothing"
    assert left > 0

    fake_api.latency = 0.0
    second = start_server(args, env, kind=kind)
    second.wait_ready()
    fake_api.wait_for(CALLS, timeout=30)
    deadline = time.monotonic() + 30
    while len({r.headers["x-a-track-request-id"] for r in fake_api.received}) < CALLS:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    second.terminate()
    received = list(fake_api.received)
    ids = collections.Counter(r.headers["x-a-track-request-id"] for r in received)
    paths = collections.Counter(r.path for r in received if ids[r.headers["x-a-track-request-id"]])
    result = {
        "arrived_before_restart": at_exit,
        "left_in_outbox": left,
        "unique_after_restart": len(ids),
        "sent_twice": sum(n - 1 for n in ids.values()),
    }
    print(f"\n{name} {mode}: {result}")
    if len(ids) != CALLS:
        second.fail(f"{len(ids)} of {CALLS} calls arrived: {result}, {dict(paths)}")
