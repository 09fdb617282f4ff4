"""Delivery CPU per event, two checkouts side by side: this one and another (``--base``).

Not a test. Run from the repo root, with a second checkout (for example a worktree of
``main``: ``git worktree add --detach ../base main``)::

    .venv/bin/python bench/bench_delivery_ab.py --base ../base            # every row, 3 rounds
    .venv/bin/python bench/bench_delivery_ab.py --base ../base --rows https-50 --rounds 5

Each measurement is a fresh process that imports ``atrack_core`` from one checkout and
runs one row of ``bench_delivery.py`` with ``transport="curl"`` (the API stand-in,
``bench/_server.py``, in its own process): ``track()`` the events to 1,000 users, then
``flush()``. The checkouts alternate row by row, round by round, so that both see the
same machine; the table gives medians. Figures per delivered event: the process's CPU
(every thread: what ``bench_delivery.py`` reports), of which the ``track()`` calls
(the caller's thread) and the sender thread; also the API stand-in's CPU, and the
sender thread's CPU over the run's wall time (near 1.0: the sender is CPU-bound; well
below: the wait is elsewhere, in the network, the API or the machine's run queue).

``--warm``: before the measured events, ``2 * max_concurrency`` events are delivered
(and flushed) unmeasured, so every connection is open: the figures are then those of
steady delivery, without the connection setup (over https, ``max_concurrency`` TLS
handshakes: ~0.5 ms of CPU each, ~7 µs per event of the 10,000-event rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = {
    # name: (scheme, latency s, events, max_concurrency, latency jitter)
    "http-0": ("http", 0.0, 10_000, 128, 0.0),
    "https-0": ("https", 0.0, 10_000, 128, 0.0),
    "http-50": ("http", 0.05, 10_000, 128, 0.0),
    "https-50": ("https", 0.05, 10_000, 128, 0.0),
    "http-50-512": ("http", 0.05, 40_000, 512, 0.0),
    "https-50-512": ("https", 0.05, 40_000, 512, 0.0),
    # 40-60 ms (uniform): the answers trickle in one by one, as from a real API.
    "http-50j": ("http", 0.05, 10_000, 128, 0.2),
    "https-50j": ("https", 0.05, 10_000, 128, 0.2),
}


def child(repo: str, row: str, warm: bool = False) -> None:
    """One measurement, with ``atrack_core`` from ``repo``; prints one JSON line."""
    sys.path.insert(0, repo)
    sys.path.insert(0, str(HERE))
    from _server import BenchServer

    import atrack_core
    from atrack_core import ATrackSdk, Options, _scheduler

    if not atrack_core.__file__ or not atrack_core.__file__.startswith(repo):
        raise SystemExit(f"atrack_core came from {atrack_core.__file__}, not {repo}")
    scheme, latency, events, concurrency, jitter = ROWS[row]
    sender_cpu = [0.0]
    running: dict[int, float] = {}  # a running sender loop's thread: its CPU at the start
    loop = _scheduler.BackgroundDelivery._multi_main

    def timed_loop(self: _scheduler.BackgroundDelivery) -> None:
        start = time.thread_time()
        running[threading.get_ident()] = start
        try:
            loop(self)
        finally:
            sender_cpu[0] += time.thread_time() - start
            del running[threading.get_ident()]

    _scheduler.BackgroundDelivery._multi_main = timed_loop  # type: ignore[method-assign]
    with BenchServer(latency=latency, tls=scheme == "https", jitter=jitter) as server:
        if server.cert_file:
            os.environ["SSL_CERT_FILE"] = server.cert_file
        assert server.proc is not None
        stat = Path(f"/proc/{server.proc.pid}/stat")

        def server_cpu() -> float:
            if not stat.exists():
                return float("nan")
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        options = Options(
            "pub_bench_key_0000",
            endpoint=server.url,
            transport="curl",
            max_concurrency=concurrency,
        )
        sdk = ATrackSdk(options)
        if warm:  # every connection opened (and handshaken) before the measurement
            for i in range(2 * concurrency):
                sdk.track("warm_up", {"i": i}, uuid=f"user-{i % 1000}")
            if not sdk.flush(120):
                raise SystemExit(f"warm-up flush timed out: {sdk.stats()}")
        sent0 = int(sdk.stats()["sent"])
        # The warm-up's share of the sender CPU, left out below.
        warm_cpu = sender_cpu[0] + sum(
            time.clock_gettime(time.pthread_getcpuclockid(ident)) - start
            for ident, start in list(running.items())
        )
        server0 = server_cpu()
        wall0, cpu0, main0 = time.perf_counter(), time.process_time(), time.thread_time()
        for i in range(events):
            sdk.track("page_viewed", {"i": i}, uuid=f"user-{i % 1000}")
        main = time.thread_time() - main0
        if not sdk.flush(120):
            raise SystemExit(f"flush timed out: {sdk.stats()}")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        served = server_cpu() - server0
        sent = int(sdk.stats()["sent"]) - sent0
        sdk.shutdown()  # the sender thread ends: its CPU time is in sender_cpu
        threading.Event().wait(0.05)
    print(
        json.dumps(
            {
                "rate": sent / wall,
                "cpu": cpu / sent * 1e6,
                "track": main / sent * 1e6,
                "sender": (sender_cpu[0] - warm_cpu) / sent * 1e6,
                "server": served / sent * 1e6,
                "busy": (sender_cpu[0] - warm_cpu) / wall,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the other checkout (required)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warm", action="store_true", help="open every connection before measuring"
    )
    parser.add_argument("--child", nargs=2, metavar=("REPO", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], warm=args.warm)
        return
    if not args.base:
        parser.error("--base is required")
    here = str(HERE.parent)
    base = str(Path(args.base).resolve())
    rows = [r for r in args.rows.split(",") if r]
    for row in rows:
        if row not in ROWS:
            raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    loads = []
    for _ in range(args.rounds):
        for row in rows:
            for repo in (base, here):
                loads.append(os.getloadavg()[0])
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", repo, row]
                    + (["--warm"] if args.warm else []),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode:
                    raise SystemExit(f"{row} with {repo} failed:\n{proc.stderr}")
                out = proc.stdout
                results.setdefault((row, repo), []).append(json.loads(out.splitlines()[-1]))
    print(
        f"{os.cpu_count()} cores, load average {min(loads):.1f}-{max(loads):.1f} during the"
        f" run; medians of {args.rounds}; CPU in µs per delivered event"
        + ("; connections opened before measuring (--warm)" if args.warm else "")
    )
    print(f"base: {base}\nthis: {here}")
    head = f"{'row':<14} {'checkout':<5} {'events/s':>9} {'CPU':>6} {'track':>6}"
    print(head + f" {'sender':>7} {'API':>5} {'sender busy':>12}")
    for row in rows:
        for name, repo in (("base", base), ("this", here)):
            runs = results[(row, repo)]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(
                f"{row:<14} {name:<5} {med('rate'):>9,.0f} {med('cpu'):>6.1f}"
                f" {med('track'):>6.1f} {med('sender'):>7.1f} {med('server'):>5.0f}"
                f" {med('busy'):>12.2f}"
            )
        before = statistics.median(r["cpu"] for r in results[(row, base)])
        after = statistics.median(r["cpu"] for r in results[(row, here)])
        print(f"{'':<14} CPU per event {after / before - 1:+.0%}")


if __name__ == "__main__":
    main()
