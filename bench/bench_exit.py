"""Exit: calls still queued when the interpreter exits, without flush() or shutdown().

Not a test. Run from the repo root::

    .venv/bin/python bench/bench_exit.py

A child process makes 5,000 ``track()`` calls (1,000 users) and ends. The exit flush
(``atexit``, bounded by ``shutdown_timeout``, default 5 s) has to deliver them. Measured
from the moment the last ``track()`` returned to the moment the process was gone:

- against a fast local server (in its own process): all 5,000 must arrive;
- against a port that refuses connections, and one that accepts and never answers: the
  process must still exit within ``shutdown_timeout`` (plus interpreter teardown).

Baseline, same run: the same child with ``disabled=True`` (nothing to send), which is
the interpreter's own exit time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import BenchServer

ROOT = Path(__file__).resolve().parent.parent

CALLS = 5000
CHILD = """
import sys, time
from atrack_core import ATrackSdk, Options
sdk = ATrackSdk(Options("pub_bench_key_0000", endpoint=sys.argv[1], disabled=sys.argv[2] == "1"))
start = time.time()
for i in range(int(sys.argv[3])):
    sdk.track("page_viewed", {"i": i}, uuid=f"user-{i % 1000}")
print(start, time.time(), sdk.stats()["queued"], flush=True)
"""


def run_child(url: str, disabled: bool = False) -> tuple[float, float, int]:
    """Seconds from the last track() to the process gone, from the first track() to
    the process gone, and how many calls were still queued after the last track()."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, "1" if disabled else "0", str(CALLS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=120)
    gone = time.time()
    if proc.returncode:
        raise SystemExit(f"child failed: {err}")
    first, last, queued = out.split()
    return gone - float(last), gone - float(first), int(queued)


def main() -> None:
    rows: list[tuple[str, float, float, int, str]] = []
    with BenchServer() as server:
        base, total, queued = run_child(server.url, disabled=True)
        rows.append(("baseline: disabled SDK, nothing to send", base, total, queued, "-"))
        before = server.count()
        took, total, queued = run_child(server.url)
        got = server.count() - before
        rows.append(("fast local server", took, total, queued, f"{got}/{CALLS}"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens: connections are refused
    took, total, queued = run_child(refused)
    rows.append(("API refusing connections", took, total, queued, f"0/{CALLS}"))
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1024)
        took, total, queued = run_child(f"http://127.0.0.1:{hole.getsockname()[1]}")
    rows.append(("API accepting, never answering", took, total, queued, f"0/{CALLS}"))

    print(f"machine: 2 shared cores; {CALLS} calls made, then the interpreter exits")
    print("shutdown_timeout: 5 s (default)")
    print(
        f"{'case':<40} {'queued':>7} {'exit s':>7} {'x baseline':>11}"
        f" {'first call->gone s':>19} {'delivered':>10}"
    )
    for name, seconds, total, queued, delivered in rows:
        print(
            f"{name:<40} {queued:>7} {seconds:>7.2f} {seconds / base:>11.1f}"
            f" {total:>19.2f} {delivered:>10}"
        )
    print("queued: calls still waiting when the last track() returned")
    print("exit s: from the last track() until the process was gone")


if __name__ == "__main__":
    main()
