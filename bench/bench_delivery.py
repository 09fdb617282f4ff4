"""Delivery throughput and cost, per transport: events per second and CPU per event.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_delivery.py                 # every scenario, both transports
    .venv/bin/python bench/bench_delivery.py --quick         # fewer events
    .venv/bin/python bench/bench_delivery.py --alternatives  # plus the httpx designs considered

The API stand-in runs in a separate process (``bench/_server.py``: a minimal asyncio
server, so the client is what is measured; ``--target collector``: the project's
collector), over http and over https (a self-signed certificate, trusted through
``SSL_CERT_FILE``), with 0 ms and 50 ms of added latency. Only the sending process's
CPU is counted (``time.process_time()``: every thread, including the ``track()`` calls
that produce the events). Events go to 1,000 distinct users unless said otherwise.

Rows, side by side in one run:

- baseline: a naive sender, one ``httpx.Client`` posting one event after another;
- floor: bare pycurl, the multi interface with 128 requests in flight (no SDK);
- the SDK with ``transport="httpx"`` and ``transport="curl"``, default options;
- at 50 ms: one uuid (5,000 events), ``max_concurrency=512`` (four times the events,
  so that its run is as long as the default row's), ``http2=True`` (https);
- a burst of 20,000 ``track()`` calls from one thread, default options: delivered.

The ``max_concurrency=512`` rows run up to 10,000 requests/s at 50 ms, where the asyncio
stand-in itself becomes the limit (~40-55 µs of its CPU per request, timers late on a
busy machine). So they get their own stand-in, ``--stand-in`` (default ``auto``: the C
server ``bench/_fast_server.c`` over http when a C compiler exists, else the asyncio one
on uvloop when installed (https too), else on asyncio; ``python``: on asyncio, as in
figures before 2026-12-04 20:00), and bare
pycurl with 512 in flight beside them; the table says which stand-in ran and its own
CPU per request. ``--wide`` runs only those rows, alternating, medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from _server import BenchServer, CollectorServer, process_cpu

from atrack_core import ATrackSdk, Options
from atrack_core._wire import event_body, headers, new_request_id, now_timestamp, serialize

KEY = "pub_bench_key_0000"
USERS = 1000
TIME_CAP = 25.0  # seconds per measurement; a slower design reports what it managed
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


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
    def cpu_us(self) -> float:
        return self.cpu / self.events * 1e6 if self.events else float("nan")


def measure(name: str, events: int, run: Callable[[], int]) -> Result:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done = run()
    return Result(name, done or events, time.perf_counter() - wall0, time.process_time() - cpu0)


# -- the SDK, the baseline, the floor ------------------------------------------------------


class Steady:
    """The delivery rate between 10 % and 90 % of the events delivered: without the
    start (the ``track()`` calls, opening the connections) and the last round trip."""

    def __init__(self, events: int) -> None:
        self.low, self.high = events // 10, events - events // 10
        self.t_low = self.t_high = 0.0
        self.rate = float("nan")

    def see(self, delivered: int) -> None:
        if not self.t_low and delivered >= self.low:
            self.t_low = time.perf_counter()
        if not self.t_high and delivered >= self.high:
            self.t_high = time.perf_counter()
            if self.t_high > self.t_low:
                self.rate = (self.high - self.low) / (self.t_high - self.t_low)


def sdk_run(
    url: str, events: int, users: int = USERS, steady: Steady | None = None, **options: object
) -> int:
    sdk = ATrackSdk(Options(KEY, endpoint=url, **options))  # type: ignore[arg-type]
    try:
        for i in range(events):
            sdk.track("page_viewed", {"i": i}, uuid=f"user-{i % users}")
        if steady is not None:  # polled every 20 ms while the sender delivers
            deadline = time.monotonic() + 120
            while not steady.t_high and time.monotonic() < deadline:
                steady.see(int(sdk.stats()["sent"]))
                time.sleep(0.02)
        if not sdk.flush(120):
            raise SystemExit(f"flush timed out: {sdk.stats()}")
        stats = sdk.stats()
        return int(stats["sent"])
    finally:
        sdk.shutdown()


def naive_run(url: str, events: int, cafile: str | None) -> int:
    deadline = time.monotonic() + TIME_CAP
    verify = httpx.create_ssl_context(verify=cafile) if cafile else True
    with httpx.Client(base_url=url, verify=verify) as client:
        for i in range(events):
            client.post("/event", content=body(i), headers=headers(KEY, new_request_id()))
            if time.monotonic() > deadline:
                return i + 1
    return events


def curl_floor_run(
    url: str, events: int, in_flight: int, cafile: str | None, steady: Steady | None = None
) -> int:
    """Bare pycurl: the multi interface, ``in_flight`` handles, pre-built bodies."""
    import pycurl

    multi = pycurl.CurlMulti()
    free = []
    for _ in range(in_flight):
        h = pycurl.Curl()
        h.setopt(pycurl.URL, url + "/event")
        h.setopt(pycurl.NOSIGNAL, 1)
        h.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        if cafile:
            h.setopt(pycurl.CAINFO, cafile)
        free.append(h)
    bodies = [body(i) for i in range(events)]
    sent = done = 0
    deadline = time.monotonic() + TIME_CAP
    while done < events and time.monotonic() < deadline:
        while free and sent < events:
            h = free.pop()
            h.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers(KEY, "x").items()])
            h.setopt(pycurl.POSTFIELDS, bodies[sent])
            multi.add_handle(h)
            sent += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            left, ok, failed = multi.info_read()
            for h in ok + [f[0] for f in failed]:
                multi.remove_handle(h)
                free.append(h)
                done += 1
            if not left:
                break
        if steady is not None:
            steady.see(done)
        multi.select(0.1)
    multi.close()
    return done


def burst_run(url: str, events: int, transport: str) -> tuple[int, int, float]:
    """``events`` track() calls from one thread, default options: (delivered, dropped,
    seconds to flush)."""
    sdk = ATrackSdk(Options(KEY, endpoint=url, transport=transport))  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        for i in range(events):
            sdk.track("backfill", {"i": i}, uuid=f"user-{i % USERS}")
        sdk.flush(300)
        stats = sdk.stats()
        return int(stats["sent"]), int(stats["dropped"]), time.perf_counter() - start
    finally:
        sdk.shutdown()


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


# -- the tables --------------------------------------------------------------------------


def table(title: str, rows: list[Result], baseline: Result) -> None:
    print(f"\n{title}")
    print(f"  {'sender':<52} {'events':>7} {'events/s':>9} {'x naive':>8} {'CPU us/ev':>10}")
    for r in rows:
        ratio = r.rate / baseline.rate if baseline.rate else 0.0
        print(f"  {r.name:<52} {r.events:>7} {r.rate:>9.0f} {ratio:>8.1f} {r.cpu_us:>10.0f}")
    sys.stdout.flush()


def wide_rows(
    scheme: str, n: int, stand_in: str, names: list[str], note: bool = True
) -> tuple[str, list[Result], list[float], list[Steady]]:
    """The ``max_concurrency=512`` rows at 50 ms on their own stand-in: bare pycurl with
    512 in flight, then the SDK per transport. Returns (stand-in, rows, the stand-in's
    CPU µs per request for each row, the rows' rates between 10 % and 90 % delivered)."""
    tls = scheme == "https"
    rows: list[Result] = []
    server_us: list[float] = []
    steadies: list[Steady] = []
    with BenchServer(latency=0.05, tls=tls, stand_in=stand_in) as server:
        assert server.proc is not None
        cafile = server.cert_file
        if cafile:
            os.environ["SSL_CERT_FILE"] = cafile
        else:
            os.environ.pop("SSL_CERT_FILE", None)
        runs: list[tuple[str, Callable[[], int]]] = []
        if "curl" in names:
            steadies.append(Steady(n))
            runs.append(
                (
                    f"floor: bare pycurl multi, 512 in flight, {n:,} events",
                    partial(curl_floor_run, server.url, n, 512, cafile, steadies[-1]),
                )
            )
        for name in names:
            steadies.append(Steady(n))
            runs.append(
                (
                    f"SDK transport={name}, max_concurrency=512, {n:,} events",
                    partial(
                        sdk_run,
                        server.url,
                        n,
                        steady=steadies[-1],
                        transport=name,
                        max_concurrency=512,
                    ),
                )
            )
        for label, fn in runs:
            before = process_cpu(server.proc.pid)
            result = measure(label, n, fn)
            rows.append(result)
            server_us.append((process_cpu(server.proc.pid) - before) / result.events * 1e6)
        got = server.count()
        delivered = sum(r.events for r in rows)
        if got != delivered:  # every event counted as sent must have reached the stand-in
            print(f"  (!) {server.stand_in} stand-in received {got:,}, rows counted {delivered:,}")
        if note:
            print(
                f"  (the {scheme} 50 ms table below, 512 rows: {server.stand_in} stand-in,"
                f" received {got:,} requests, its CPU per request: "
                + ", ".join(f"{u:.1f} µs" for u in server_us)
                + "; events/s from 10 % to 90 % delivered: "
                + ", ".join(f"{x.rate:,.0f}" for x in steadies)
                + ")"
            )
        return server.stand_in, rows, server_us, steadies


def wide(rounds: int, n: int, stand_ins: list[str], schemes: list[str]) -> None:
    """Only the 512 rows, each stand-in and scheme in turn, ``rounds`` times; medians."""
    import statistics

    names = [t for t in transports() if t == "curl"] or ["httpx"]
    found: dict[tuple[str, str, str], list[tuple[float, float, float, float]]] = {}
    loads: list[float] = []
    for _ in range(rounds):
        for scheme in schemes:
            for stand_in in stand_ins:
                if stand_in == "c" and scheme == "https":
                    continue
                loads.append(os.getloadavg()[0])
                ran, rows, server_us, steadies = wide_rows(scheme, n, stand_in, names, False)
                for r, us, st in zip(rows, server_us, steadies, strict=True):
                    key = (scheme, ran, r.name)
                    found.setdefault(key, []).append((r.rate, r.cpu_us, us, st.rate))
    print(
        f"\n50 ms added latency, max_concurrency=512 (ceiling 10,240/s), {n:,} events per row;"
        f" load average {min(loads):.1f}-{max(loads):.1f} during the run; medians of {rounds}"
    )
    print(
        "  events/s: the whole row (track() calls to the last answer); 10-90 %: from 10 % to"
        " 90 % of the events delivered"
    )
    print(
        f"  {'stand-in':<8} {'row':<58} {'events/s':>9} {'10-90 %':>8} {'CPU us/ev':>10}"
        f" {'API us/req':>11}"
    )
    for (scheme, ran, name), values in found.items():
        rate, cpu, api, mid = (statistics.median(v[k] for v in values) for k in range(4))
        row = f"{scheme}: {name}"
        print(f"  {ran:<8} {row:<58} {rate:>9,.0f} {mid:>8,.0f} {cpu:>10.1f} {api:>11.1f}")
    sys.stdout.flush()


def transports() -> list[str]:
    try:
        import pycurl  # noqa: F401
    except ImportError:
        print("(pycurl not installed: the curl rows are left out)")
        return ["httpx"]
    return ["httpx", "curl"]


def scenario(
    scheme: str,
    latency: float,
    n: int,
    target: str,
    alternatives: bool,
    extras: bool,
    stand_in: str = "auto",
) -> None:
    label = f"{scheme}, {latency * 1000:.0f} ms added latency"
    tls = scheme == "https"
    if target == "collector":
        if tls:
            return
        server_cm: BenchServer | CollectorServer = CollectorServer(latency=latency)
    else:
        server_cm = BenchServer(latency=latency, tls=tls)
    names = transports()
    with server_cm as server:
        cafile = getattr(server, "cert_file", None)
        if cafile:
            os.environ["SSL_CERT_FILE"] = cafile  # the SDK's transports trust it
        else:
            os.environ.pop("SSL_CERT_FILE", None)
        url = server.url
        naive_n = 2000 if latency == 0 else 100
        rows: list[Result] = []
        baseline = measure(
            "naive: one httpx.Client, sequential",
            naive_n,
            partial(naive_run, url, naive_n, cafile),
        )
        rows.append(baseline)
        if "curl" in names:
            rows.append(
                measure(
                    "floor: bare pycurl multi, 128 in flight",
                    n,
                    partial(curl_floor_run, url, n, 128, cafile),
                )
            )
        for name in names:
            rows.append(
                measure(
                    f"SDK transport={name}, default options",
                    n,
                    partial(sdk_run, url, n, transport=name),
                )
            )
        if extras and latency > 0:
            one = 5000
            for name in names:
                rows.append(
                    measure(
                        f"SDK transport={name}, one uuid, 5,000 events",
                        one,
                        partial(sdk_run, url, one, users=1, transport=name),
                    )
                )
            # Four times the events: at 512 in flight, n events are only ~n/512 round
            # trips, and opening 512 connections and draining the last ones would be a
            # fifth of the run; with 4n it lasts as long as the default row's run. Their
            # own stand-in (--stand-in): at ~10,000 requests/s the asyncio one limits.
            if target == "fast":
                rows += wide_rows(scheme, 4 * n, stand_in, names)[1]
                if cafile:
                    os.environ["SSL_CERT_FILE"] = cafile
            if tls:
                for name in names:
                    rows.append(
                        measure(
                            f"SDK transport={name}, http2=True",
                            n,
                            partial(sdk_run, url, n, transport=name, http2=True),
                        )
                    )
        if alternatives and scheme == "http":
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
                    "  the same with TCP_NODELAY",
                    partial(threads_run, url, m, 128, "transport-nodelay"),
                ),
                ("asyncio, one AsyncClient, 128 in flight", partial(async_run, url, m, 128, 1)),
                ("asyncio, 16 AsyncClients x 8 in flight", partial(async_run, url, m, 128, 16)),
                ("asyncio, 128 AsyncClients x 1 in flight", partial(async_run, url, m, 128, 128)),
            ]
            for name, fn in designs:
                rows.append(measure(name, m, fn))
                time.sleep(0.5)
        got = server.count()
    table(f"{label} (server received {got} requests)", rows, baseline)


def burst(events: int) -> None:
    print(f"\nburst: {events:,} track() calls from one thread, default options, http 0 ms")
    with BenchServer(latency=0.0) as server:
        os.environ.pop("SSL_CERT_FILE", None)
        for name in transports():
            sent, dropped, seconds = burst_run(server.url, events, name)
            print(
                f"  transport={name:<6} delivered {sent:>6,} of {events:,}, dropped {dropped:,},"
                f" all delivered after {seconds:.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alternatives", action="store_true", help="also the designs considered")
    parser.add_argument("--events", type=int, default=10_000, help="events per SDK run")
    parser.add_argument("--quick", action="store_true", help="3,000 events per run")
    parser.add_argument(
        "--target",
        choices=["fast", "collector"],
        default="fast",
        help="fast: bench/_server.py (default); collector: `atrack collector` (SQLite)",
    )
    parser.add_argument(
        "--stand-in",
        choices=["auto", "c", "uvloop", "python"],
        default="auto",
        help="API stand-in of the max_concurrency=512 rows: auto (C over http when cc"
        " exists, else uvloop when installed), c (bench/_fast_server.c, http only), uvloop"
        " (bench/_server.py on uvloop), python (bench/_server.py on asyncio)",
    )
    parser.add_argument(
        "--wide", action="store_true", help="only the max_concurrency=512 rows, medians"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --wide")
    parser.add_argument(
        "--schemes", default="http,https", help="schemes of --wide (comma-separated)"
    )
    args = parser.parse_args()
    n = 3000 if args.quick else args.events
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} cores, shared (load average {load:.1f} at start);"
        f" target: {args.target} server in its own process; CPU = this process"
    )
    if args.wide:
        stand_ins = ["c", "uvloop", "python"] if args.stand_in == "auto" else [args.stand_in]
        wide(args.rounds, 4 * n, stand_ins, args.schemes.split(","))
        return
    for scheme in ("http", "https"):
        for latency in (0.0, 0.05):
            scenario(
                scheme,
                latency,
                n,
                args.target,
                args.alternatives,
                extras=True,
                stand_in=args.stand_in,
            )
    burst(20_000)


if __name__ == "__main__":
    main()
