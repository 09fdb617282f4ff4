"""The outbox's cost and its outage figures (docs/outbox.md).

1. CPU per event, outbox off and on side by side in one run (alternating, best of
   each): the process's CPU time to track N events and deliver them all, against the
   fast bench server with no added latency (most calls are delivered before a group
   commit would write them) and with 50 ms (every call is written, then deleted).
   Also ``track()``'s median in the caller's thread, off and on.
2. The middleware benches (Starlette, Flask) with the outbox off and on.
3. The API down for ``--down`` seconds (60) while 100,000 events are tracked, then back:
   peak RSS, peak disk in the outbox directory, and the time until every event arrived.

    python bench/bench_outbox.py [--events 10000] [--down 60] [--outage-events 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from _server import BenchServer

from atrack_core import ATrackSdk, Options

KEY = "pub_bench_outbox_4242"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dir_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def thread_cpu(name: str) -> float:
    """CPU seconds of the live threads called ``name`` (Linux: their schedstat)."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id:
            path = f"/proc/self/task/{thread.native_id}/schedstat"
            with contextlib.suppress(OSError), open(path) as stat:
                total += int(stat.read().split()[0]) / 1e9
    return total


def cpu_run(url: str, outbox: str | None, events: int) -> tuple[float, float, float]:
    """(CPU µs per event to track and deliver, track() median µs, the outbox writer
    thread's CPU µs per event)."""
    sdk = ATrackSdk(Options(KEY, endpoint=url, outbox=outbox))
    sdk.track("warm", uuid="u0")
    sdk.flush(30)
    gc.collect()
    samples = []
    cpu = time.process_time()
    writer = thread_cpu("atrack-outbox")
    for i in range(events):
        start = time.perf_counter_ns()
        sdk.track("bench", {"i": i}, uuid=f"user-{i % 500}")
        samples.append(time.perf_counter_ns() - start)
    assert sdk.flush(120)
    if outbox is not None:
        time.sleep(0.4)  # the writer's last commits (its deletes: every 0.25 s) are part of it
    used = time.process_time() - cpu
    writer = thread_cpu("atrack-outbox") - writer
    sdk.shutdown()
    return used / events * 1e6, statistics.median(samples) / 1000, writer / events * 1e6


def cpu_figures(events: int) -> None:
    for latency in (0.0, 0.05):
        with BenchServer(latency=latency) as server:
            results: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
            for _ in range(3):
                for mode in ("off", "on"):
                    with tempfile.TemporaryDirectory() as tmp:
                        outbox = os.path.join(tmp, "ob") if mode == "on" else None
                        results[mode].append(cpu_run(server.url, outbox, events))
        off = min(r[0] for r in results["off"])
        on = min(r[0] for r in results["on"])
        p50_off = min(r[1] for r in results["off"])
        p50_on = min(r[1] for r in results["on"])
        print(
            f"latency {latency * 1000:.0f} ms, {events} events: CPU/event off {off:.1f} µs, "
            f"on {on:.1f} µs, added {on - off:+.1f} µs; track() p50 off {p50_off:.2f} µs, "
            f"on {p50_on:.2f} µs; writer thread CPU/event "
            + " ".join(f"{r[2]:.2f}" for r in results["on"])
            + " µs"
        )


def commit_figure(calls: int = 20_000) -> None:
    """The writer's CPU per call for one commit of ``calls`` calls, nothing else
    running: the SDK posts to a blackhole (every call is written), the writer is kept
    asleep while they are tracked, then one commit runs here."""
    import bench_middleware

    from atrack_core import _scheduler
    from atrack_core._outbox import _outbox

    _scheduler.MAX_QUEUE_BYTES = 1 << 40
    interval = _outbox.COMMIT_INTERVAL
    wake_at = getattr(_outbox, "WAKE_AT", None)  # the first version woke at 1,000 calls
    figures = []
    try:
        for _ in range(5):
            _outbox.COMMIT_INTERVAL = 1000.0
            if wake_at is not None:
                setattr(_outbox, "WAKE_AT", 10**9)  # noqa: B010
            with tempfile.TemporaryDirectory() as tmp:
                sdk = ATrackSdk(
                    Options(
                        KEY,
                        endpoint=bench_middleware.blackhole_url(),
                        max_queue_size=10 * calls,
                        shutdown_timeout=0.1,
                        outbox=os.path.join(tmp, "ob"),
                    )
                )
                outbox = sdk._outbox
                assert outbox is not None
                outbox._opened.wait(10)
                for i in range(calls):
                    sdk.track("product_list_viewed", {"page": 2}, uuid=f"user-{i % 500}")
                gc.collect()
                with outbox._io:
                    start = time.thread_time()
                    outbox._commit()
                    figures.append((time.thread_time() - start) / calls * 1e6)
                sdk.shutdown(timeout=0.1)
    finally:
        _outbox.COMMIT_INTERVAL = interval
        if wake_at is not None:
            setattr(_outbox, "WAKE_AT", wake_at)  # noqa: B010
    print(
        f"one commit of {calls} calls: writer CPU per call "
        + " ".join(f"{f:.2f}" for f in figures)
        + " µs"
    )


def middleware_figures(n: int, repeats: int = 3) -> None:
    """The middleware benches (Starlette, Flask) with the outbox off and on, alternated:
    the SDK posts to a blackhole, so with the outbox every call is written (its worst
    case: nothing is ever delivered and removed).

    Figures per mode: the bench's own (wall time a request with ``track()`` adds to
    the bare app, best run), and CPU time over the whole bench (bare and tracked apps,
    all scenarios, the writer's final commit included) per call the SDK accepted, split
    into the main thread's (the requests) and the other threads' (the outbox writer;
    the senders sit blocked on the blackhole): on a shared machine the more honest
    cost, since the writer's work runs on another core as long as one is free."""
    import bench_middleware
    import bench_middleware_wsgi

    plain = bench_middleware.make_sdk

    def with_outbox(directory: str) -> ATrackSdk:
        sdk = plain()
        options = sdk.options
        sdk.shutdown(timeout=0.1)
        return ATrackSdk(
            Options(
                options.public_key,
                endpoint=options.endpoint,
                max_queue_size=options.max_queue_size,
                shutdown_timeout=0.1,
                outbox=directory,
            )
        )

    benches = {
        "starlette": (bench_middleware, bench_middleware.bench_starlette),
        "flask": (bench_middleware_wsgi, bench_middleware_wsgi.bench_flask),
    }
    for name, (module, bench) in benches.items():
        added: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        main_cpu: dict[str, list[float]] = {"off": [], "on": []}
        try:
            for _ in range(repeats):
                for mode in ("off", "on"):
                    with tempfile.TemporaryDirectory() as tmp:
                        sdks: list[ATrackSdk] = []

                        def make(
                            tmp: str = tmp, mode: str = mode, sdks: list[ATrackSdk] = sdks
                        ) -> ATrackSdk:
                            sdk = with_outbox(tmp + "/ob") if mode == "on" else plain()
                            sdks.append(sdk)
                            return sdk

                        module.make_sdk = make  # type: ignore[attr-defined]
                        gc.collect()
                        start, start_main = time.process_time(), time.thread_time()
                        rows = bench(n, 3)
                        used = time.process_time() - start
                        used_main = time.thread_time() - start_main
                    label, bare, tracked = rows[0]  # returning user, cookie + track()
                    added[mode].append(tracked - bare)
                    calls = sum(sdk.stats()["enqueued"] for sdk in sdks)
                    cpu[mode].append(used / calls * 1e6)
                    main_cpu[mode].append(used_main / calls * 1e6)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        finally:
            module.make_sdk = plain  # type: ignore[attr-defined]
        cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
        main_off, main_on = statistics.median(main_cpu["off"]), statistics.median(main_cpu["on"])
        print(
            f"middleware {name}, {label}: added off {min(added['off']):.1f} µs, "
            f"on {min(added['on']):.1f} µs (best of {repeats} each); CPU per call (median "
            f"of {repeats}): process off {cpu_off:.1f} µs, on {cpu_on:.1f} µs "
            f"({cpu_on - cpu_off:+.1f}); main thread off {main_off:.1f}, on {main_on:.1f} "
            f"({main_on - main_off:+.1f}); other threads off {cpu_off - main_off:.1f}, "
            f"on {cpu_on - main_on:.1f}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outage(events: int, down: float) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "ob"
        sdk = ATrackSdk(Options(KEY, endpoint=url, outbox=directory, shutdown_timeout=1.0))
        rss0 = rss_mib()
        peak_rss = peak_disk = 0.0
        started = time.monotonic()
        per_second = events / (down * 0.8)
        i = 0
        while time.monotonic() - started < down:
            due = int((time.monotonic() - started) * per_second)
            while i < min(due, events):
                sdk.track("outage", {"i": i}, uuid=f"user-{i % 1000}")
                i += 1
            peak_rss = max(peak_rss, rss_mib())
            peak_disk = max(peak_disk, dir_bytes(directory))
            time.sleep(0.02)
        stats = sdk.stats()
        print(
            f"API down {down:.0f} s, {i} events tracked: RSS {rss0:.0f} -> peak "
            f"{peak_rss:.0f} MiB, outbox peak {peak_disk / 2**20:.1f} MiB on disk "
            f"(max bytes {256} MiB), dropped {stats['dropped']}, in memory "
            f"{stats['queued']}, on disk {stats['outbox_pending']}"
        )
        with BenchServer(port=port) as server:
            back = time.monotonic()
            while server.count() < i:
                peak_rss = max(peak_rss, rss_mib())
                peak_disk = max(peak_disk, dir_bytes(directory))
                if time.monotonic() - back > 600:
                    break
                time.sleep(0.2)
            took = time.monotonic() - back
            arrived = server.count()
        stats = sdk.stats()
        sdk.shutdown()
        print(
            f"API back: {arrived} of {i} arrived {took:.1f} s later (requests, retries "
            f"included); peak RSS {peak_rss:.0f} MiB, peak disk {peak_disk / 2**20:.1f} MiB; "
            f"dropped {stats['dropped']}, outbox_dropped {stats['outbox_dropped']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--down", type=float, default=60.0)
    parser.add_argument("--outage-events", type=int, default=100_000)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument("--skip-middleware", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    if not args.skip_cpu:
        commit_figure()
        cpu_figures(args.events)
    if not args.skip_middleware:
        middleware_figures(5_000)
    if not args.skip_outage:
        outage(args.outage_events, args.down)


if __name__ == "__main__":
    main()
