"""Redis going down (or hanging) mid-run and coming back while the app serves requests.

Two Flask apps (the example shop) share one RedisStorage server, standing in for two
worker processes; simulated users alternate between them, from several threads at
once. Redis is stopped for a while, then started again on the same port ("down"), or
frozen with SIGSTOP and thawed with SIGCONT ("hung": connections open, no answers, so
every attempt runs into the socket timeout).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from atrack_core import ATrackSdk, Options
from tests.fake_api import FakeApi
from tests.redis_server import RedisServer

pytest.importorskip("flask")
pytest.importorskip("redis")

pytestmark = [pytest.mark.slow, pytest.mark.redis]

KEY = "pub_outage_test_4242"
RETRY_INTERVAL = 0.3
SOCKET_TIMEOUT = 0.25


@dataclass
class Visit:
    """One simulated user: a landing page on one worker, two orders on the other."""

    started: float
    ended: float = 0.0
    uuid: str = ""
    statuses: list[int] = field(default_factory=list)
    slowest: float = 0.0


@pytest.fixture
def workers(own_redis: RedisServer, fake_api: FakeApi) -> Iterator[list[Any]]:
    """Two apps, each with its own SDK and RedisStorage (as two processes would)."""
    from atrack_core.redis import RedisStorage
    from example_apps.flask_shop.app import create_app

    sdks = [
        ATrackSdk(
            Options(
                KEY,
                endpoint=fake_api.url,
                storage=RedisStorage(
                    own_redis.url, socket_timeout=SOCKET_TIMEOUT, retry_interval=RETRY_INTERVAL
                ),
            )
        )
        for _ in range(2)
    ]
    # TESTING: an exception in a view (or in A-Track's hooks) reaches the test client.
    yield [create_app({"ATRACK_SDK": sdk, "TESTING": True}) for sdk in sdks]
    for sdk in sdks:
        sdk.shutdown(timeout=5)


def visit(apps: list[Any], n: int) -> Visit:
    first, second = apps[n % 2], apps[(n + 1) % 2]
    record = Visit(time.monotonic())
    landing = first.test_client()
    t = time.monotonic()
    response = landing.get(f"/?source=v{n}")
    record.slowest = time.monotonic() - t
    record.statuses.append(response.status_code)
    cookie = landing.get_cookie("atrack_uuid")
    record.uuid = cookie.value if cookie is not None else ""
    other = second.test_client()
    other.set_cookie("atrack_uuid", record.uuid)
    for _ in range(2):
        t = time.monotonic()
        record.statuses.append(other.post("/orders", json={"amount": n + 1}).status_code)
        record.slowest = max(record.slowest, time.monotonic() - t)
    record.ended = time.monotonic()
    return record


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outage", ["down", "hung"])
def test_requests_keep_answering_while_redis_is_out_and_back(
    own_redis: RedisServer,
    fake_api: FakeApi,
    workers: list[Any],
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    caplog.set_level(logging.DEBUG, "atrack")
    visits: list[Visit] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def user_loop() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter)
            try:
                record = visit(workers, n)
            except BaseException as exc:  # anything reaching the app fails the test
                failures.append(exc)
                return
            with lock:
                visits.append(record)
            time.sleep(0.02)  # about 100 visits a second in all: enough to see every phase

    threads = [threading.Thread(target=user_loop, name=f"user-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.8)
        assert own_redis.proc is not None
        pid = own_redis.proc.pid
        stopping_at = time.monotonic()
        if outage == "down":
            own_redis.stop()  # returns once the server has exited
        else:
            os.kill(pid, signal.SIGSTOP)
        down_at = time.monotonic()
        time.sleep(1.2)
        up_at = time.monotonic()
        if outage == "down":
            own_redis.start()  # returns once the server answers PING
        else:
            os.kill(pid, signal.SIGCONT)
        # The last failure was before now: Redis is asked again at the latest
        # RETRY_INTERVAL later.
        recovered_at = time.monotonic() + RETRY_INTERVAL + 0.1
        time.sleep(1.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, f"an exception reached the app: {failures[0]!r}"
    bad = [v for v in visits if v.statuses != [200, 201, 201] or not v.uuid]
    assert not bad, f"{len(bad)} of {len(visits)} visits failed, e.g. {bad[0]}"

    for sdk in (app.extensions["atrack"].sdk for app in workers):
        assert sdk.flush(10), sdk.stats()
    received = fake_api.received
    inits = collections.Counter(r.body["uuid"] for r in received if r.path == "/init")
    events = collections.Counter(r.body["uuid"] for r in received if r.path == "/event")
    before = [v for v in visits if v.ended < stopping_at]
    during = [v for v in visits if v.started > down_at and v.ended < up_at]
    after = [v for v in visits if v.started > recovered_at]
    assert before and during and after, (len(before), len(during), len(after))
    # Nothing lost: every user initialised at least once, every event delivered.
    assert all(inits[v.uuid] >= 1 and events[v.uuid] == 3 for v in visits)
    # Redis up: one /init per user although each user met both workers.
    assert [inits[v.uuid] for v in before + after] == [1] * (len(before) + len(after))
    # Redis out: each worker treats the user as new (a miss): a duplicate /init, never
    # a missing one. (A hung Redis may still apply a SET NX that timed out on the
    # client, once it thaws: then the other worker sees it and sends no second one.)
    if outage == "down":
        assert [inits[v.uuid] for v in during] == [2] * len(during)
    else:
        assert all(inits[v.uuid] in (1, 2) for v in during)
        assert sum(inits[v.uuid] for v in during) > len(during)
    # A request waits at most for one attempt (connect, or a reply that does not come:
    # the socket timeout), and only one request per worker per RETRY_INTERVAL does.
    slowest = max(v.slowest for v in visits)
    slow_during = sorted(v.slowest for v in during)
    assert slowest < 2 * SOCKET_TIMEOUT + 0.4, f"a request took {slowest:.3f} s"
    # (Without the rest after a failure, every request of a hung outage would wait.)
    assert slow_during[len(slow_during) // 2] < 0.15, "the outage slowed most requests"

    redis_logs = [r for r in caplog.records if r.name == "atrack.redis"]
    warnings = [r.getMessage() for r in redis_logs if r.levelno >= logging.WARNING]
    # Per worker about one warning for the outage and one for the recovery (a reply
    # in flight while Redis shuts down can add a pair); the rest is DEBUG.
    failed = len([m for m in warnings if "failed" in m])
    recovered = len([m for m in warnings if "reachable again" in m])
    assert 2 <= failed <= 4 and 2 <= recovered <= 4, warnings
    errors = [r for r in caplog.records if r.name.startswith("atrack") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]
    print(
        f"\n{outage}: visits: {len(visits)} ({len(before)} before, "
        f"{len(during)} during the outage, "
        f"{len(after)} after); slowest request {slowest * 1000:.1f} ms, during the outage "
        f"median {slow_during[len(slow_during) // 2] * 1000:.1f} ms; "
        f"redis log lines {len(redis_logs)}, of which warnings {len(warnings)}"
    )
