"""Run every benchmark in bench/ one after the other and print their tables.

Each benchmark measures its own baseline in the same run (the bare app, a naive
sender) and prints ratios: this machine class has 2 shared cores, so absolute
numbers move between runs while the ratios hold. ``make bench`` calls this.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "bench_track.py",
    "bench_request_context.py",
    "bench_middleware.py",
    "bench_middleware_wsgi.py",
    "bench_delivery.py",
    "bench_exit.py",
    "bench_memory.py",
]


def main() -> int:
    failed = []
    for name in ORDER + sorted(p.name for p in HERE.glob("bench_*.py") if p.name not in ORDER):
        path = HERE / name
        if not path.exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(path)], cwd=HERE.parent, check=False)
        print(f"--- {name}: exit {proc.returncode} in {time.monotonic() - started:.1f}s")
        if proc.returncode:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
