"""Helpers for the outbox tests: a collector, waiting on what it received, a child
process that tracks with an outbox and can be killed."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

collector_mod = pytest.importorskip("atrack_core.collector")

ROOT = Path(__file__).resolve().parents[2]
KEY = "pub_outbox_test_4242"


@pytest.fixture
def collector() -> Iterator[Any]:
    with collector_mod.run_in_thread() as running:
        yield running


@pytest.fixture
def slow_collector() -> Iterator[Any]:
    """200 ms per call: calls stay queued across several group commits."""
    with collector_mod.run_in_thread(latency=0.2) as running:
        yield running


def unique_calls(collector: Any) -> list[dict[str, Any]]:
    """Accepted calls, one per request id (the collector marks repeats as duplicates)."""
    return [c for c in collector.store.calls() if c["status"] == 200 and not c["duplicate"]]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def duplicates(collector: Any) -> int:
    counts = collections.Counter(c["request_id"] for c in collector.store.calls())
    return sum(n - 1 for n in counts.values())


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running ``code`` (stdout piped, stderr to the test's)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
