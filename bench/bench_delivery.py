"""Delivery throughput: events per second and CPU seconds per 1,000 events.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_delivery.py                 # the SDK against the baseline
    .venv/bin/python bench/bench_delivery.py --alternatives  # plus the designs considered

The API stand-in runs in a separate process with 0 ms and 50 ms of added latency: by
default ``bench/_server.py`` (a minimal asyncio server, so the client is what is
measured), with ``--target collector`` the project's collector (Starlette, uvicorn,
SQLite; it needs the ``collector`` extra and, on 2 cores, competes with the SDK for
CPU). Only the sending process's CPU is counted (``time.process_time()``:
every thread of this process, including the ``track()`` calls that produce the events).
Events go to 1,000 distinct users (per-user order allows one call in flight per user).

Baseline, same run: a naive sender, one ``httpx.Client`` posting one event after another.
Targets (SPEC section 9): >= 2,000 events/s at 50 ms, <= 0.5 CPU s per 1,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _server import BenchServer, CollectorServer

from atrack_core import ATrackSdk, Options
from atrack_core._wire import event_body, headers, new_request_id, now_timestamp, serialize

KEY = "pub_bench_key_0000"
USERS = 1000
TIME_CAP = 25.0
NODELAY = [
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
]  # seconds per measurement; a slower design reports what it managed


def body(i: int) -> bytes:
    return serialize(
        "/event", event_body(f"user-{i % USERS}", "page_viewed", {"i": i}, now_timestamp(), {})
    )


class Result:
    def __init__(self, name: str, events: int, wall: float, cpu: float) -> None:
        self.name = name
        self.events = events
        self.wall = wall
        self.cpu = cpu

    @property
    def rate(self) -> float:
        return self.events / self.wall if self.wall else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.events * 1000 if self.events else float("nan")


def measure(name: str, events: int, run: Callable[[], int]) -> Result:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done = run()
    return Result(name, done or events, time.perf_counter() - wall0, time.process_time() - cpu0)


# -- the SDK and the baseline ----------------------------------------------------------


def sdk_run(url: str, events: int, **options: object) -> int:
    sdk = ATrackSdk(Options(KEY, endpoint=url, **options))  # type: ignore[arg-type]
    try:
        for i in range(events):
            sdk.track("page_viewed", {"i": i}, uuid=f"user-{i % USERS}")
        if not sdk.flush(120):
            raise SystemExit("flush timed out")
        stats = sdk.stats()
        assert stats["sent"] == events, stats
        return events
    finally:
        sdk.shutdown()


def naive_run(url: str, events: int) -> int:
    deadline = time.monotonic() + TIME_CAP
    with httpx.Client(base_url=url) as client:
        for i in range(events):
            client.post("/event", content=body(i), headers=headers(KEY, new_request_id()))
            if time.monotonic() > deadline:
                return i + 1
    return events


# -- designs considered (--alternatives) -----------------------------------------------


def threads_run(url: str, events: int, threads: int, mode: str) -> int:
    """``threads`` workers draining a queue; ``mode``: "client" (an httpx.Client each),
    "transport" (an httpx.HTTPTransport each, used directly), "transport-nodelay" (the
    same with TCP_NODELAY: the SDK's senders), "shared" (one Client for all)."""
    work: queue.Queue[int | None] = queue.Queue()
    for i in range(events):
        work.put(i)
    for _ in range(threads):
        work.put(None)
    ssl_context = httpx.create_ssl_context()
    shared = httpx.Client(
        base_url=url, verify=ssl_context, limits=httpx.Limits(max_connections=threads)
    )
    target = httpx.URL(url + "/event")
    timeout = httpx.Timeout(5.0).as_dict()
    deadline = time.monotonic() + TIME_CAP
    count = [0]
    lock = threading.Lock()

    def worker() -> None:
        client = (
            httpx.Client(base_url=url, verify=ssl_context, limits=httpx.Limits(max_connections=1))
            if mode == "client"
            else shared
        )
        transport = httpx.HTTPTransport(
            verify=ssl_context,
            limits=httpx.Limits(max_connections=1),
            socket_options=NODELAY if mode == "transport-nodelay" else None,
        )
        try:
            while (i := work.get()) is not None and time.monotonic() < deadline:
                if mode.startswith("transport"):
                    req = httpx.Request(
                        "POST",
                        target,
                        content=body(i),
                        headers=headers(KEY, new_request_id()),
                        extensions={"timeout": timeout},
                    )
                    resp = transport.handle_request(req)
                    resp.read()
                    resp.close()
                else:
                    client.post("/event", content=body(i), headers=headers(KEY, new_request_id()))
                with lock:
                    count[0] += 1
        finally:
            transport.close()
            if client is not shared:
                client.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    shared.close()
    return count[0]


def async_run(url: str, events: int, in_flight: int, clients: int) -> int:
    """asyncio: ``clients`` AsyncClients, ``in_flight`` requests at once spread over them."""

    async def main() -> int:
        ssl_context = httpx.create_ssl_context()
        per = max(1, in_flight // clients)
        pool = [
            httpx.AsyncClient(
                base_url=url, verify=ssl_context, limits=httpx.Limits(max_connections=per)
            )
            for _ in range(clients)
        ]
        work: asyncio.Queue[int] = asyncio.Queue()
        for i in range(events):
            work.put_nowait(i)
        deadline = time.monotonic() + TIME_CAP
        count = 0

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal count
            while not work.empty() and time.monotonic() < deadline:
                i = work.get_nowait()
                await client.post("/event", content=body(i), headers=headers(KEY, new_request_id()))
                count += 1

        await asyncio.gather(*(worker(pool[n % clients]) for n in range(in_flight)))
        for client in pool:
            await client.aclose()
        return count

    return asyncio.run(main())


# -- the table ---------------------------------------------------------------------------


def table(rows: list[tuple[str, Result]], baseline: Result) -> None:
    print(
        f"{'latency':>8} {'sender':<44} {'events':>7} {'events/s':>9} {'x naive':>8}"
        f" {'CPU s/1k':>9}"
    )
    for latency, r in rows:
        print(
            f"{latency:>8} {r.name:<44} {r.events:>7} {r.rate:>9.0f}"
            f" {r.rate / baseline.rate if baseline.rate else 0:>8.1f} {r.cpu_per_1000:>9.3f}"
        )


def run_latency(latency: float, n: int, alternatives: bool, target: str) -> None:
    label = f"{latency * 1000:.0f} ms"
    rows: list[tuple[str, Result]] = []
    server_class = CollectorServer if target == "collector" else BenchServer
    with server_class(latency=latency) as server:
        url = server.url
        naive_n = 2000 if latency == 0 else 100
        baseline = measure(
            "naive: one httpx.Client, sequential", naive_n, partial(naive_run, url, naive_n)
        )
        rows.append((label, baseline))
        rows.append((label, measure("A-Track SDK, default options", n, partial(sdk_run, url, n))))
        if alternatives:
            m = min(n, 5000)
            designs: list[tuple[str, Callable[[], int]]] = [
                ("128 threads, an httpx.Client each", partial(threads_run, url, m, 128, "client")),
                (
                    "128 threads, one shared httpx.Client",
                    partial(threads_run, url, m, 128, "shared"),
                ),
                (
                    "128 threads, an HTTPTransport each",
                    partial(threads_run, url, m, 128, "transport"),
                ),
                (
                    "  the same with TCP_NODELAY (the SDK's senders)",
                    partial(threads_run, url, m, 128, "transport-nodelay"),
                ),
                ("asyncio, one AsyncClient, 128 in flight", partial(async_run, url, m, 128, 1)),
                ("asyncio, 16 AsyncClients x 8 in flight", partial(async_run, url, m, 128, 16)),
                ("asyncio, 128 AsyncClients x 1 in flight", partial(async_run, url, m, 128, 128)),
            ]
            for name, fn in designs:
                rows.append((label, measure(name, m, fn)))
                time.sleep(0.5)
        got = server.count()
    table(rows, baseline)
    print(f"(server received {got} requests)\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alternatives", action="store_true", help="also the designs considered")
    parser.add_argument("--events", type=int, default=10_000, help="events per SDK run")
    parser.add_argument(
        "--target",
        choices=["fast", "collector"],
        default="fast",
        help="fast: bench/_server.py (default); collector: `atrack collector` (SQLite)",
    )
    args = parser.parse_args()
    print(
        f"machine: 2 shared cores; target: {args.target} server in its own process; "
        "CPU = this process"
    )
    for latency in (0.0, 0.05):
        run_latency(latency, args.events, args.alternatives, args.target)


if __name__ == "__main__":
    main()
