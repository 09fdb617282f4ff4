"""Memory while the API is down: 200,000 calls made, RSS bounded by the queue limit.

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_memory.py

The SDK points at a port that refuses connections, with the default
``max_queue_size`` (50,000; the waiting bodies are also bounded to 32 MiB). 200,000
``track()`` calls are made (1,000 users, a few attributes each); the process's resident
memory is sampled every 20,000 calls. Once 50,000 calls wait, later ones are dropped
(counted in ``stats().dropped``), so memory must stop growing there.

Baseline, same run (in a separate child process, so one does not inherit the other's
heap): the same calls on a ``disabled=True`` SDK, which validates and serialises but
keeps nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = 200_000
STEP = 20_000
LIMIT = 50_000

CHILD = """
import json, os, sys
from atrack_core import ATrackSdk, Options

def rss_mib():
    with open("/proc/self/statm") as f:  # Linux: resident pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

sdk = ATrackSdk(Options("pub_bench_key_0000", endpoint=sys.argv[1], disabled=sys.argv[2] == "1",
                        shutdown_timeout=0.5))
attrs = {"plan": "pro", "amount": 12, "currency": "EUR", "items": ["a", "b", "c"]}
sdk.track("warm_up", attrs, uuid="user-0")
samples = [(0, rss_mib(), 0, 0)]
for i in range(1, int(sys.argv[3]) + 1):
    sdk.track("page_viewed", attrs, uuid=f"user-{i % 1000}")
    if i % int(sys.argv[4]) == 0:
        s = sdk.stats()
        samples.append((i, rss_mib(), s["queued"] + s["in_flight"], s["dropped"]))
print(json.dumps(samples))
"""


def run_child(url: str, disabled: bool) -> list[tuple[int, float, int, int]]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, url, "1" if disabled else "0", str(CALLS), str(STEP)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"child failed: {proc.stderr}")
    return [tuple(row) for row in json.loads(proc.stdout)]  # type: ignore[misc]


def main() -> None:
    if not Path("/proc/self/statm").exists():
        raise SystemExit("needs Linux (/proc/self/statm)")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens: the API is down
    base = run_child(url, disabled=True)
    down = run_child(url, disabled=False)

    print(f"machine: 2 shared cores; API down (connection refused); max_queue_size {LIMIT:,}")
    print(f"{'calls':>8} {'baseline RSS MiB':>17} {'SDK RSS MiB':>12} {'held':>7} {'dropped':>8}")
    for (n, base_rss, _, _), (_, rss, held, dropped) in zip(base, down, strict=True):
        print(f"{n:>8} {base_rss:>17.1f} {rss:>12.1f} {held:>7} {dropped:>8}")
    growth = max(r for _, r, _, _ in down) - down[0][1]
    base_growth = max(r for _, r, _, _ in base) - base[0][1]
    at_limit = next((r for n, r, held, _ in down if held >= LIMIT), down[-1][1])
    after = down[-1][1] - at_limit
    print(
        f"peak RSS growth: SDK {growth:.1f} MiB, baseline {base_growth:.1f} MiB; "
        f"after the queue filled: {after:+.1f} MiB over {CALLS - STEP:,} more calls"
    )


if __name__ == "__main__":
    main()
