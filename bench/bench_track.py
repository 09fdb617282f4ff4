"""``track()`` cost in the caller's thread: median and p99 microseconds per call.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_track.py

What a web request pays for one event: validation, serialisation to the wire body and
the enqueue. The SDK sends to an endpoint that accepts connections and never answers,
with a queue large enough for every call, so the sender threads sit blocked on their
sockets and nothing but the caller's work is timed. A second SDK row runs while the
senders are busy delivering to a fast local server: that is the same work plus waiting
for the GIL, which is what a busy process sees.

Baseline, same run: a bare function building the same body dict and ``json.dumps`` it,
to give the scale. Target (SPEC section 9): at most 10 µs median.
"""

from __future__ import annotations

import gc
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer

from atrack_core import ATrackSdk, EventPayload, Options

KEY = "pub_bench_key_0000"
CALLS = 50_000
ATTRS = {"plan": "pro", "amount": 12, "currency": "EUR"}


@contextmanager
def blackhole() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def timed(fn: Callable[[int], object], calls: int = CALLS) -> tuple[float, float]:
    """Median and p99 in µs of ``fn(i)``, after a warm-up."""
    for i in range(2000):
        fn(i)
    gc.collect()
    samples = [0] * calls
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        fn(i)
        samples[i] = clock() - start
    samples.sort()
    return samples[calls // 2] / 1000, samples[calls * 99 // 100] / 1000


def baseline(i: int) -> bytes:
    body = {
        "sdkVersion": "0.1.0",
        "uuid": f"user-{i % 1000}",
        "event": "order_created",
        "attributes": ATTRS,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "context": {},
    }
    return json.dumps(body).encode()


def main() -> None:
    rows: list[tuple[str, float, float]] = []
    rows.append(("baseline: build the body dict + json.dumps", *timed(baseline)))
    with blackhole() as url:
        sdk = ATrackSdk(Options(KEY, endpoint=url, max_queue_size=10_000_000, shutdown_timeout=0.1))
        rows.append(
            (
                'sdk.track("order_created", attrs, uuid=...)',
                *timed(lambda i: sdk.track("order_created", ATTRS, uuid=f"user-{i % 1000}")),
            )
        )
        rows.append(
            (
                "sdk.track(EventPayload(...))",
                *timed(
                    lambda i: sdk.track(
                        EventPayload("order_created", uuid=f"user-{i % 1000}", attributes=ATTRS)
                    )
                ),
            )
        )
        queued = sdk.stats()["queued"]
        sdk.shutdown(timeout=0.1)
    assert queued > 0
    with BenchServer() as server:
        sdk = ATrackSdk(Options(KEY, endpoint=server.url, max_queue_size=10_000_000))
        rows.append(
            (
                "sdk.track(...) while senders deliver",
                *timed(
                    lambda i: sdk.track("order_created", ATTRS, uuid=f"user-{i % 1000}"), 20_000
                ),
            )
        )
        sdk.shutdown(timeout=30)

    base = rows[0][1]
    print("machine: 2 shared cores; µs per call in the caller's thread")
    print(f"{'call':<46} {'median µs':>10} {'p99 µs':>8} {'x baseline':>11}")
    for name, median, p99 in rows:
        print(f"{name:<46} {median:>10.1f} {p99:>8.1f} {median / base:>11.1f}")
    print("target: track() <= 10 µs median")


if __name__ == "__main__":
    main()
