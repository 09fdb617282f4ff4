"""The outbox across processes: ``multiprocessing.Pool`` children, ``atrack outbox
inspect``/``flush`` on the files of a killed process, the integrations' settings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atrack_core import ATrackSdk, Options
from atrack_integrations._settings import resolve_sdk
from tests.outbox.conftest import KEY, ROOT, spawn, unique_calls, wait_until

POOL = """
import multiprocessing, sys
from atrack_core import ATrackSdk, Options
sdk = ATrackSdk(Options(sys.argv[1], endpoint=sys.argv[2], outbox=sys.argv[3]))

def work(start):
    for i in range(start, start + 50):
        sdk.track("pooled", {"i": i}, uuid=f"user-{i % 13}")
    return start

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(4) as pool:
        done = pool.map(work, range(0, 1000, 50))
        pool.close()
        pool.join()
    print("done", len(done), flush=True)
"""


def test_multiprocessing_pool_children_deliver_everything(tmp_path: Path, collector: Any) -> None:
    outbox = tmp_path / "ob"
    child = spawn(POOL, KEY, collector.url, str(outbox))
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    assert "done 20" in out
    # Each child flushes at its exit; what one could not is in its file, adopted by
    # the next SDK using the directory.
    sdk = ATrackSdk(Options(KEY, endpoint=collector.url, outbox=outbox))
    wait_until(lambda: len(unique_calls(collector)) >= 1000, 30, "1,000 events")
    sdk.shutdown()
    calls = unique_calls(collector)
    assert sorted(json.loads(c["body"])["attributes"]["i"] for c in calls) == list(range(1000))


KILLED = """
import sys, time
from atrack_core import ATrackSdk, Options
sdk = ATrackSdk(Options(sys.argv[1], endpoint="http://127.0.0.1:9", outbox=sys.argv[2]))
for i in range(500):
    sdk.track("left", {"i": i}, uuid=f"user-{i % 5}")
while sdk.stats()["outbox_unwritten"] or sdk.stats()["outbox_pending"] < 500:
    time.sleep(0.01)
print("written", flush=True)
time.sleep(600)
"""


def atrack(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRACK_")}
    return subprocess.run(
        [sys.executable, "-m", "atrack_core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_inspect_and_flush_deliver_a_dead_process_calls(tmp_path: Path, collector: Any) -> None:
    outbox = tmp_path / "ob"
    child = spawn(KILLED, KEY, str(outbox))
    assert child.stdout is not None
    assert child.stdout.readline().startswith("written")
    live = atrack("outbox", "inspect", str(outbox))
    assert "process alive" in live.stdout and "500 calls" in live.stdout, live
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    dead = atrack("outbox", "inspect", str(outbox))
    assert dead.returncode == 0
    assert "process gone" in dead.stdout and "/event 500" in dead.stdout, dead.stdout
    # Another project's SDK on the same directory leaves the file alone (its calls
    # would go out with the wrong key).
    other = ATrackSdk(Options("pub_another_project_1", endpoint=collector.url, outbox=outbox))
    assert other.flush(10)
    other.shutdown()
    assert other.stats()["outbox_adopted"] == 0
    assert collector.store.calls() == []
    flushed = atrack("outbox", "flush", str(outbox), "--key", KEY, "--endpoint", collector.url)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert "adopted 500 calls, delivered 500" in flushed.stdout
    assert len(unique_calls(collector)) == 500
    assert "no outbox files" in atrack("outbox", "inspect", str(outbox)).stdout


def test_cli_inspect_names_a_fifo_or_symlink_without_reading_it(tmp_path: Path) -> None:
    # Opening a FIFO to read it blocks until a writer comes: inspect hung for good on
    # one named like an outbox file, or on a symlink to one. It reads only regular
    # files now, and still reads the real file beside them.
    outbox = tmp_path / "ob"
    sdk = ATrackSdk(Options(KEY, endpoint="http://127.0.0.1:9", outbox=outbox, max_retries=0))
    try:
        for i in range(3):
            sdk.track("kept", {"i": i}, uuid="u1")
        wait_until(lambda: sdk.stats()["outbox_pending"] == 3, 30, "3 calls on disk")
        os.mkfifo(outbox / "atrack-999999-aaaaaaaa.db")
        os.mkfifo(tmp_path / "elsewhere")
        (outbox / "atrack-999998-bbbbbbbb.db").symlink_to(tmp_path / "elsewhere")
        listed = atrack("outbox", "inspect", str(outbox))
    finally:
        sdk.shutdown(0.5)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    not_read = "unreadable: not a regular file (a symlink, FIFO or device): not read"
    assert f"atrack-999998-bbbbbbbb.db  {not_read}" in lines, listed.stdout
    assert f"atrack-999999-aaaaaaaa.db  {not_read}" in lines, listed.stdout
    assert any("(process alive)  3 calls" in line for line in lines), listed.stdout
    assert lines[-1] == "3 calls pending in 3 files", listed.stdout


def test_integration_settings_turn_the_outbox_on(tmp_path: Path, collector: Any) -> None:
    sdk = resolve_sdk(
        public_key=KEY,
        endpoint=collector.url,
        outbox=str(tmp_path / "ob"),
        outbox_max_bytes="1048576",
        outbox_max_age="60",
    )
    try:
        assert sdk.options.outbox_max_bytes == 1048576
        assert sdk.options.outbox_max_age == 60.0
        sdk.track("configured", uuid="u1")
        assert sdk.flush(10)
        assert "outbox_pending" in sdk.stats()
    finally:
        sdk.shutdown()
    assert len(unique_calls(collector)) == 1


def test_flask_config_turns_the_outbox_on(tmp_path: Path, collector: Any) -> None:
    flask = pytest.importorskip("flask")
    from atrack_integrations.flask import ATrack

    app = flask.Flask(__name__)
    app.config.update(
        ATRACK_PUBLIC_KEY=KEY,
        ATRACK_ENDPOINT=collector.url,
        ATRACK_OUTBOX=str(tmp_path / "ob"),
        ATRACK_OUTBOX_MAX_AGE="3600",
    )
    ATrack(app)
    sdk = app.extensions["atrack"].sdk
    try:
        assert sdk.options.outbox == str(tmp_path / "ob")
        assert sdk.options.outbox_max_age == 3600.0
        assert "outbox_pending" in sdk.stats()
    finally:
        sdk.shutdown()


def test_a_partly_readable_file_is_adopted_as_far_as_it_reads_and_listed(
    tmp_path: Path, collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead process's file cut short (a torn copy, a full disk): the next SDK adopts
    and delivers the calls that can still be read, moves the file aside with an ERROR
    line saying how many, and `atrack outbox inspect` lists it; an SDK starting later
    says it is there. Its calls were all lost before, with a line saying none."""
    outbox = tmp_path / "ob"
    sdk = ATrackSdk(Options(KEY, endpoint="http://127.0.0.1:9", outbox=outbox, max_retries=0))
    for i in range(600):
        sdk.track("left", {"i": i, "pad": "x" * 300}, uuid=f"user-{i % 5}")
    wait_until(lambda: sdk.stats()["outbox_pending"] == 600, 30, "600 calls on disk")
    sdk.shutdown(0.1)
    (path,) = outbox.glob("*.db")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.truncate(path, path.stat().st_size // 2)

    sdk = ATrackSdk(Options(KEY, endpoint=collector.url, outbox=outbox))
    assert sdk.flush(20)
    adopted = sdk.stats()["outbox_adopted"]
    sdk.shutdown()
    assert 0 < adopted < 600
    assert len(unique_calls(collector)) == adopted
    (aside,) = [  # its side files (-wal, -shm) are moved with it
        p
        for p in outbox.iterdir()
        if p.name.startswith(path.name + ".corrupt-") and p.name[-1].isdigit()
    ]
    (line,) = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert f"{adopted} calls that could be read were adopted" in line, line
    assert aside.name in line

    listed = atrack("outbox", "inspect", str(outbox))
    assert listed.returncode == 0, listed.stderr
    assert (
        f"{aside.name}  (moved aside: could not be used)  {adopted} calls readable, adopted "
        "when it was moved aside, the rest cannot be read"
    ) in listed.stdout.splitlines(), listed.stdout
    caplog.clear()
    ATrackSdk(Options(KEY, endpoint=collector.url, outbox=outbox)).shutdown()
    assert f"holds 1 files moved aside as unreadable ({aside.name})" in caplog.text
