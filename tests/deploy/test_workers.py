"""The example shops under gunicorn (sync, gthread, uvicorn and asgi workers) and
uvicorn, with 4 worker processes sharing a RedisStorage.

100 users x 5 requests (a landing page, then 4 orders), each user with its own cookie
jar, against a real gunicorn (or uvicorn) master; the SDK sends to a local collector with 50 ms of
added latency, so calls are still queued when the master gets SIGTERM. Then:

- exactly one ``/init`` per user across all the workers (deduplicated through Redis),
  but for one more per miss of Redis on that user's key that the workers' DEBUG log
  shows (a reply later than the 0.25 s timeout on a loaded machine: by design, a
  duplicate ``/init`` rather than a lost user);
- every event delivered, once as the API keeps it: a call may arrive more than once
  only as a retry under the same request id (a timeout on a loaded machine), never as a
  different call, and the copies may not outnumber the retries the workers' SDKs
  counted (their DEBUG delivery records, ``tests/deploy/logsite``); each event carries
  the uuid of that user's cookie;
- nothing lost on SIGTERM: no explicit flush, the workers' exit flush (WSGI: the
  ``atexit`` flush; ASGI: the lifespan flush) sends what was still queued.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import ROOT, Server, StartServer
from tests.redis_server import RedisServer

pytest.importorskip("gunicorn")
pytest.importorskip("redis")
collector_mod = pytest.importorskip("atrack_core.collector")

pytestmark = [pytest.mark.slow, pytest.mark.redis]

KEY = "pub_deploy_test_4242"
USERS = 100
ORDERS = 4  # per user, after the landing page
# Added latency at the collector: a user's calls go one after another (per-user order),
# so the last users' calls are still queued when SIGTERM arrives.
COLLECTOR_LATENCY = 0.05


@dataclass
class Session:
    """What one user (one cookie jar) saw."""

    index: int
    uuid: str = ""
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def amount(user: int, order: int) -> int:
    """A distinct order amount per user and order: every event names its sender."""
    return user * 100 + order + 1


def run_user(base_url: str, index: int) -> Session:
    session = Session(index)
    # No keep-alive: each request is a new connection, taken by whichever worker
    # accepts it first, as behind a load balancer; a user's requests spread over
    # the workers instead of sticking to one.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base_url, timeout=15, limits=no_keepalive) as client:
        try:
            landing = client.get("/", params={"source": f"user{index}"})
            session.statuses.append(landing.status_code)
            session.uuid = client.cookies.get("atrack_uuid") or ""
            for order in range(ORDERS):
                response = client.post("/orders", json={"amount": amount(index, order)})
                session.statuses.append(response.status_code)
                if response.headers.get("set-cookie"):
                    session.errors.append(f"order {order} set a cookie again")
        except httpx.HTTPError as exc:
            session.errors.append(repr(exc))
    return session


def drive(base_url: str) -> tuple[list[Session], float]:
    started = time.monotonic()
    with ThreadPoolExecutor(25) as pool:
        sessions = list(pool.map(lambda i: run_user(base_url, i), range(USERS)))
    return sessions, time.monotonic() - started


@pytest.fixture
def collector() -> Iterator[Any]:
    with collector_mod.run_in_thread(latency=COLLECTOR_LATENCY) as running:
        yield running


def debug_log(redis: RedisServer) -> Path:
    return Path(redis.workdir) / "atrack-debug.log"


def delivery_records(log: Path) -> tuple[int, int, int]:
    """(processes that logged a delivery record, calls they sent, retries they counted):
    the last record of each process (the counters are cumulative), from the DEBUG log
    every process of the server wrote (``tests/deploy/logsite``). A worker logs one
    after a flush (the ASGI lifespan's) and at shutdown (the exit flush)."""
    text = log.read_text() if log.exists() else ""
    pattern = (
        r"A-Track delivery record \(pid (\d+), [^)]*\): "
        r"\d+ enqueued, (\d+) sent, (\d+) retried"
    )
    last: dict[str, tuple[int, int]] = {}
    for pid, sent, retried in re.findall(pattern, text):
        last[pid] = (int(sent), int(retried))
    return len(last), sum(s for s, _ in last.values()), sum(r for _, r in last.values())


def storage_misses(log: Path) -> collections.Counter[str]:
    """uuid -> how many times the storage missed on ``add`` of that user's init dedupe
    key (failed, e.g. a Redis reply later than its 0.25 s timeout on a loaded machine,
    or not asked while resting after a failure), from the DEBUG lines the workers wrote
    (``atrack_core/_resting.py``, ``_init_dedupe``). Each such miss may send one more
    ``/init``: by design, a duplicate rather than a user never initialised."""
    text = log.read_text() if log.exists() else ""
    found = re.findall(r"\badd (?:\S*:)?init:([0-9a-f-]{36})(?::| failed)", text)
    return collections.Counter(found)


def check_deployment(
    server: Server, collector: Any, redis: RedisServer, report: dict[str, Any]
) -> None:
    server.wait_ready()
    sessions, load_seconds = drive(server.url)
    problems = [f"user {s.index}: {s.errors}" for s in sessions if s.errors]
    problems += [
        f"user {s.index}: statuses {s.statuses}"
        for s in sessions
        if s.statuses != [200] + [201] * ORDERS
    ]
    problems += [f"user {s.index}: no atrack_uuid cookie" for s in sessions if not s.uuid]
    if problems:
        server.fail("requests failed:\n" + "\n".join(problems[:20]))
    uuids = {s.uuid: s.index for s in sessions}
    if len(uuids) != USERS:
        server.fail(f"{USERS} users got only {len(uuids)} distinct uuids")

    log = debug_log(redis)
    arrived_before = len(collector.store.calls())
    code = server.terminate()
    if code != 0:
        server.fail(f"{server.kind} exited with {code} after SIGTERM")
    # No explicit flush and no waiting: the workers flushed before they exited.
    calls = collector.store.calls()
    report.update(
        load_seconds=round(load_seconds, 2),
        calls_at_sigterm=arrived_before,
        calls_after_exit=len(calls),
        exit_seconds=round(server.exit_seconds or 0, 2),
    )

    def fail(message: str) -> None:
        server.fail(f"{message}\nfigures: {report}")

    rejected = [c for c in calls if c["status"] != 200]
    if rejected:
        fail(f"the collector rejected {len(rejected)} calls, e.g. {rejected[0]}")
    # At least once, never a different call under one id: a retry (a timeout under
    # load, a reset) resends a call with its request id, and the API deduplicates by it.
    copies: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for c in calls:
        copies[c["request_id"]].append(c)
    mixed = [rid for rid, cs in copies.items() if len({(c["path"], c["body"]) for c in cs}) > 1]
    if mixed:
        fail(f"{len(mixed)} request ids carry different calls, e.g. {copies[mixed[0]]}")
    duplicates = len(calls) - len(copies)
    # Every extra copy is a retry the SDKs counted (their shutdown lines, read from the
    # workers' log): a copy nobody retried would be a resend behind the engine's back.
    processes, sent, retried = delivery_records(log)
    report.update(duplicates=duplicates, retried=retried)
    if processes < 4 or sent > len(copies):
        fail(f"the workers' log has records of {processes} processes, {sent} sent")
    if duplicates > retried:
        fail(f"{duplicates} duplicate arrivals but the workers counted {retried} retries")
    calls = [cs[0] for cs in copies.values()]  # one per call, as the API keeps them

    inits = [c for c in calls if c["path"] == "/init"]
    init_counts = collections.Counter(c["uuid"] for c in inits)
    # One /init per user, but for one more per storage miss on that user's key (the
    # dedupe then sends it; SPEC: a failing storage is treated as a miss).
    misses = storage_misses(log)
    extra = {u: n for u, n in init_counts.items() if n > 1}
    unexplained = {u: n for u, n in extra.items() if n - 1 > misses[u]}
    report.update(extra_inits=sum(n - 1 for n in extra.values()), storage_misses=len(misses))
    missing = set(uuids) - set(init_counts)
    if missing or set(init_counts) != set(uuids) or unexplained:
        fail(
            f"expected one /init per user, got {len(inits)} for {len(init_counts)} uuids: "
            f"{len(missing)} users without one, {len(extra)} with more than one {extra}; "
            f"storage misses on add in the workers' debug log for those: "
            f"{ {u: misses[u] for u in extra} } (an extra /init is allowed only per miss); "
            f"unexplained: {unexplained}"
        )
    # The first visit's /init says isNewUser; an extra one (sent for a later request,
    # which came with the cookie) does not.
    new_users = collections.Counter(c["uuid"] for c in inits if json.loads(c["body"])["isNewUser"])
    wrong_new = {u: new_users[u] for u in uuids if new_users[u] != 1}
    if wrong_new:
        fail(f"expected one /init with isNewUser per user, got (uuid: how many) {wrong_new}")

    events = [json.loads(c["body"]) for c in calls if c["path"] == "/event"]
    expected_events = USERS * (1 + ORDERS)
    if len(events) != expected_events:
        fail(f"expected {expected_events} events, {len(events)} arrived")
    per_user: dict[str, list[Any]] = collections.defaultdict(list)
    wrong: list[str] = []
    for body in events:
        uuid, attributes = body["uuid"], body["attributes"]
        if body["event"] == "landing_viewed":
            owner = int(attributes["source"].removeprefix("user"))
            per_user[uuid].append("landing")
        else:
            owner = (int(attributes["amount"]) - 1) // 100
            per_user[uuid].append(int(attributes["amount"]))
        if uuids.get(uuid) != owner:
            wrong.append(f"{body['event']} of user {owner} carries uuid {uuid}")
    if wrong:
        fail(f"{len(wrong)} events with another user's uuid: {wrong[:5]}")
    for uuid, index in uuids.items():
        # Compared as sets: per-user order holds within one process, and a user's
        # requests were served by several worker processes, each sending on its own.
        expected = ["landing", *(amount(index, order) for order in range(ORDERS))]
        if sorted(per_user[uuid], key=str) != sorted(expected, key=str):
            fail(f"user {index} ({uuid}): events {per_user[uuid]}, expected {expected}")
    # How often another worker's event overtook the user's /init (documented).
    init_at = {c["uuid"]: c["id"] for c in inits}
    report["events_before_their_init"] = sum(
        1 for c in calls if c["path"] == "/event" and c["id"] < init_at[c["uuid"]]
    )

    # The dedupe went through Redis: every user's init key is there.
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url, decode_responses=True)
    try:
        keys = {k.removeprefix("atrack:init:") for k in client.scan_iter("atrack:init:*")}
        set_calls = client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    finally:
        client.close()
    if keys != set(uuids):
        fail(f"Redis holds {len(keys)} init keys for {len(uuids)} users")
    # Each worker asks Redis (SET NX) the first time it sees a user: more asks than
    # users means users were served by several workers and Redis refused the extra
    # /inits, which is what this test is about.
    report["redis_refused_inits"] = set_calls - USERS
    if set_calls <= USERS:
        fail(f"{set_calls} SET NX for {USERS} users: no user reached a second worker")
    print(f"\n{report}")


def deployment_env(collector: Any, redis: RedisServer) -> dict[str, str]:
    return {
        "ATRACK_PUBLIC_KEY": KEY,
        "ATRACK_ENDPOINT": collector.url,
        "ATRACK_REDIS_URL": redis.url,
        # Every process logs A-Track at DEBUG to a file (retries counted at shutdown).
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'deploy' / 'logsite'}",
        "ATRACK_TEST_LOG": str(debug_log(redis)),
    }


COMMON: Sequence[str] = ("--workers", "4", "--graceful-timeout", "20")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_flask_shop_under_gunicorn_with_preload(
    start_server: StartServer,
    collector: Any,
    own_redis: RedisServer,
    worker_class: str,
) -> None:
    pytest.importorskip("flask")
    threads = ["--threads", "8"] if worker_class == "gthread" else []
    server = start_server(
        [*COMMON, "--worker-class", worker_class, *threads, "--preload",
         "example_apps.flask_shop.app:app"],
        deployment_env(collector, own_redis),
    )  # fmt: skip
    check_deployment(server, collector, own_redis, {"server": f"flask {worker_class} --preload"})


def asgi_worker_class(kind: str) -> str:
    if kind == "uvicorn":
        pytest.importorskip("uvicorn")
        # uvicorn.workers is deprecated in favour of the uvicorn-worker package.
        if importlib.util.find_spec("uvicorn_worker") is not None:
            return "uvicorn_worker.UvicornWorker"
        return "uvicorn.workers.UvicornWorker"
    from gunicorn.workers import SUPPORTED_WORKERS

    if "asgi" not in SUPPORTED_WORKERS:  # gunicorn's own ASGI worker, since 25
        pytest.skip("this gunicorn has no ASGI worker")
    return "asgi"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["uvicorn", "asgi"])
def test_fastapi_shop_under_gunicorn_with_asgi_workers(
    start_server: StartServer, collector: Any, own_redis: RedisServer, kind: str
) -> None:
    pytest.importorskip("fastapi")
    worker_class = asgi_worker_class(kind)
    server = start_server(
        [*COMMON, "--worker-class", worker_class, "example_apps.fastapi_shop.app:app"],
        deployment_env(collector, own_redis),
    )
    check_deployment(server, collector, own_redis, {"server": f"fastapi {worker_class}"})


@pytest.mark.timeout(60)
def test_fastapi_shop_under_uvicorn_workers(
    start_server: StartServer, collector: Any, own_redis: RedisServer
) -> None:
    """``uvicorn --workers 4``: spawned (not forked) workers, SIGTERM to the parent."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    server = start_server(
        ["--workers", "4", "example_apps.fastapi_shop.app:app"],
        deployment_env(collector, own_redis),
        kind="uvicorn",
    )
    check_deployment(server, collector, own_redis, {"server": "fastapi uvicorn --workers 4"})
