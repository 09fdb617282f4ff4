from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import atrack_core.collector

ROOT = Path(__file__).resolve().parents[2]


def test_public_names() -> None:
    assert atrack_core.collector.__all__ == [
        "MAX_BODY_BYTES",
        "BodyError",
        "Collector",
        "Store",
        "create_app",
        "key_id",
        "mask_key",
        "parse_body",
        "run_in_thread",
        "serve",
    ]
    for name in atrack_core.collector.__all__:
        assert getattr(atrack_core.collector, name) is not None


def test_core_import_does_not_pull_in_the_collector() -> None:
    code = (
        "import sys, atrack_core; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'uvicorn') or m.startswith('atrack_core.collector')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_collector_repr_and_lifecycle() -> None:
    collector = atrack_core.collector.Collector()
    assert "stopped" in repr(collector)
    with collector:
        assert collector.url.startswith("http://127.0.0.1:")
        assert collector.port > 0
        assert "running" in repr(collector)
        assert collector.app.state.store is collector.store
    assert "stopped" in repr(collector)
    collector.stop()  # idempotent


def test_wait_for_calls_times_out_with_a_clear_message() -> None:
    with (
        atrack_core.collector.run_in_thread() as collector,
        pytest.raises(TimeoutError, match=r"expected 1 calls to /event within 0\.05 s, got 0"),
    ):
        collector.wait_for_calls(1, path="/event", timeout=0.05)


def test_a_collector_that_cannot_start_raises_and_stays_stopped(tmp_path: Path) -> None:
    collector = atrack_core.collector.Collector(latency=-1)
    with pytest.raises(ValueError, match="latency"):
        collector.start()
    with pytest.raises(sqlite3.OperationalError):
        atrack_core.collector.Collector(db_path=tmp_path / "no-such-dir" / "db").start()
    assert "stopped" in repr(collector)
    with pytest.raises(RuntimeError, match="not running"):
        collector.store  # noqa: B018
