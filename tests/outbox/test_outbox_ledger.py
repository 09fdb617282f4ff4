"""The outbox's ledger: every call made ends delivered (the API saw its request id),
on disk for the next process, or counted in stats() with a log line; across a burst
beyond the queue, a held API, a shutdown in the middle of the burst and the next SDK
loading the file back against an API that flaps."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

import atrack_core._retry as retry
from atrack_core import ATrackSdk, Options
from tests.fake_api import FakeApi, Plan
from tests.ledger import Ledger
from tests.outbox.conftest import KEY, spawn, wait_until

pytestmark = pytest.mark.timeout(30)


def delivered(api: FakeApi) -> set[int]:
    return {int(r.body["uuid"].removeprefix("u")) for r in api.received if r.status == 200}


def on_disk(directory: Path) -> set[int]:
    out: set[int] = set()
    for path in directory.glob("*.db"):
        with contextlib.closing(sqlite3.connect(path)) as db:
            for (uuid,) in db.execute("SELECT uuid FROM calls"):
                out.add(int(uuid.removeprefix("u")))
    return out


def test_every_call_of_a_burst_cut_by_shutdown_is_delivered_kept_or_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.005)
    caplog.set_level(logging.DEBUG, logger="atrack")
    outbox = tmp_path / "ob"
    ledger = Ledger()
    with FakeApi() as api:
        answer = threading.Event()
        api.default = Plan(hold=answer)
        sdk = ATrackSdk(
            Options(
                KEY,
                endpoint=api.url,
                outbox=outbox,
                max_queue_size=20,
                max_concurrency=4,
                on_error=ledger,
                shutdown_timeout=0.2,
            )
        )
        for n in range(300):  # far beyond the queue: the rest spills to the file
            sdk.track("burst", {"n": n}, uuid=f"u{n}")
        api.wait_for(1)
        halfway = threading.Event()

        def burst() -> None:
            for n in range(300, 600):
                sdk.track("burst", {"n": n}, uuid=f"u{n}")
                if n == 400:
                    halfway.set()

        thread = threading.Thread(target=burst)
        thread.start()
        halfway.wait()
        sdk.shutdown()  # the API holds every answer: the flush runs out of time
        thread.join()
        sdk.track("after", {"n": 600}, uuid="u600")
        made = 601
        answer.set()
        # The calls in flight at the shutdown end on their own (the queued ones stay:
        # no sender takes them after a shutdown; they are in the file).
        wait_until(lambda: sdk.stats()["in_flight"] == 0, 5, "the calls in flight")
        stats = sdk.stats()
        sent = delivered(api)
    kept = on_disk(outbox)
    assert stats["outbox_dropped"] == stats["outbox_expired"] == 0, stats
    everything = set(range(made))
    # Every call: delivered, kept on disk, or counted and reported.
    assert everything - sent - kept - set(ledger.lost) == set(), stats
    assert len(ledger.lost) == stats["dropped"] + stats["failed"], stats
    assert ledger.twice == []  # each reported once
    assert 600 in ledger.lost  # made after the shutdown
    assert any(
        "dropping calls made once shutdown() began" in r.getMessage() for r in caplog.records
    )

    # The next SDK loads the file back, the API flapping meanwhile.
    with FakeApi() as api:
        api.plan(
            "/event",
            Plan(503, retry_after="0"),
            Plan(429, retry_after="0"),
            Plan(drop=True),
            Plan(503),
            Plan(500),
        )
        sdk = ATrackSdk(Options(KEY, endpoint=api.url, outbox=outbox, max_queue_size=100))
        assert sdk.flush(10)
        later = sdk.stats()
        sdk.shutdown()
        again = delivered(api)
    assert later["failed"] == later["dropped"] == 0, later
    assert again == kept
    assert on_disk(outbox) == set()


FORK_OPEN_FAILS = """
import json, os, sys, threading
from pathlib import Path
from atrack_core import ATrackSdk, Options

url, outbox = sys.argv[1], Path(sys.argv[2])
lost = []
sdk = ATrackSdk(
    Options(
        "@KEY@",
        endpoint=url,
        outbox=outbox,
        max_queue_size=5,
        max_concurrency=1,
        on_error=lambda call, error: lost.append(call.uuid),
    )
)
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    outbox.unlink()  # the parent's own file back in place for its exit
    os.rename(outbox.with_name("moved"), outbox)
    sys.exit(os.waitstatus_to_exitcode(status))
# The child: its outbox starts a writer of its own with its first call; that writer
# cannot open a file (the directory is replaced by a plain file after the SDK checked
# it). The calls after the first are made while the writer is published and not yet
# running (the moment a thread start takes, held open here), so that those beyond the
# queue spill to it before it finds that it cannot.
start = threading.Thread.start
spilled = []


def start_late(thread):
    if thread.name == "atrack-outbox" and not spilled:
        os.rename(outbox, outbox.with_name("moved"))
        outbox.write_text("not a directory")
        for n in range(1, 20):
            sdk.track("burst", {"n": n}, uuid=f"u{n}")
        spilled.append(sdk.stats()["outbox_spilled"])
    start(thread)


threading.Thread.start = start_late
sdk.track("burst", {"n": 0}, uuid="u0")
spilled = spilled[0]
if sys.argv[3] == "flush":
    flushed = sdk.flush(5)
    stats = sdk.stats()
    sdk.shutdown()
else:  # the API holds every answer: the shutdown runs out of time
    flushed = True
    sdk.shutdown(0.2)
    stats = sdk.stats()
print(json.dumps({"spilled": spilled, "flushed": flushed, "stats": stats, "lost": lost}))
sys.stdout.flush()
os._exit(0)
""".replace("@KEY@", KEY)


@pytest.mark.parametrize("end", ["flush", "shutdown"])
def test_calls_spilled_while_a_forked_childs_file_is_opened_are_kept_when_it_cannot_be(
    tmp_path: Path, end: str
) -> None:
    """A forked child's writer cannot open its file after the child's calls beyond the
    queue were spilled to it: they go back to the scheduler (delivered from memory), or
    are counted and reported as dropped; none stays behind as 'spilled' in a store that
    will never write it. With the API holding every answer, a shutdown that runs out
    of time counts and reports the calls it leaves as dropped, as without an outbox:
    no file keeps them."""
    answer = threading.Event()
    with FakeApi() as api:
        if end == "shutdown":
            api.default = Plan(hold=answer)
        child = spawn(FORK_OPEN_FAILS, api.url, str(tmp_path / "ob"), end)
        out, _ = child.communicate(timeout=20)
        answer.set()
        assert child.returncode == 0
        sent = delivered(api) if end == "flush" else set()
    result = json.loads(out)
    stats, lost = result["stats"], {int(u.removeprefix("u")) for u in result["lost"]}
    assert result["spilled"] > 0, result  # the case under test
    assert stats["queued"] == 0, result
    in_flight = stats["in_flight"]  # the attempt under way at the shutdown (held)
    assert len(set(range(20)) - sent - lost) == in_flight, result
    assert len(lost) == stats["dropped"] + stats["failed"], result
    assert stats["sent"] + stats["dropped"] + stats["failed"] + in_flight == 20, result
    assert result["flushed"], result


def test_a_shutdown_the_stalled_writer_outlasts_says_how_many_calls_are_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer is stalled in SQLite (another connection holds the file's write lock)
    with calls it has taken and not committed when shutdown() ends: the process may
    exit with them in memory only, and a WARNING line says how many."""
    caplog.set_level(logging.WARNING, logger="atrack")
    outbox = tmp_path / "ob"
    with FakeApi() as api:
        answer = threading.Event()
        api.default = Plan(hold=answer)  # nothing is delivered: every call needs writing
        sdk = ATrackSdk(
            Options(KEY, endpoint=api.url, outbox=outbox, max_queue_size=5, shutdown_timeout=0.1)
        )
        sdk.track("before", uuid="u0")
        wait_until(lambda: sdk.stats()["outbox_pending"] == 1, 5, "the first commit")
        (path,) = outbox.glob("*.db")
        other = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            other.execute("BEGIN IMMEDIATE")  # the writer's next INSERT waits for it
            for n in range(1, 21):
                sdk.track("burst", {"n": n}, uuid=f"u{n}")
            # The writer took calls (all, or the first of them: the others wait behind)
            # and is stuck inside SQLite with them.
            wait_until(lambda: sdk.stats()["outbox_unwritten"] < 20, 5, "the writer to take some")
            sdk.shutdown()
            written = on_disk(outbox)  # the lock still held: not yet
        finally:
            other.execute("ROLLBACK")
            other.close()
            answer.set()
        # Written once the lock went: nothing was lost in this process, which lived on.
        wait_until(
            lambda: delivered(api) | on_disk(outbox) == set(range(21)), 10, "the writer to finish"
        )
    assert written == {0}
    lines = [r.getMessage() for r in caplog.records if "not yet written" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "20 calls" in lines[0]


def test_a_commit_that_fails_loses_none_of_the_spilled_calls_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's commit fails (here: a trigger another connection put on the file
    aborts every insert, a real SQLite error at once where a held write lock made the
    writer wait out SQLite's 5 s busy timeout first); a fresh file is started. The
    spilled calls that commit had taken, which nobody else holds, are written to the
    fresh file; every row of the old file, which can still be read, is carried over to
    it: those waiting there, and those of calls in the scheduler's hands (which were
    in memory only until they settled: a crash lost them, and the waiting ones were
    counted in outbox_dropped). The old file, all of it read, is removed."""
    caplog.set_level(logging.WARNING, logger="atrack")
    outbox = tmp_path / "ob"
    with FakeApi() as api:
        answer = threading.Event()
        api.default = Plan(hold=answer)  # nothing is delivered: every call needs writing
        sdk = ATrackSdk(
            Options(
                KEY,
                endpoint=api.url,
                outbox=outbox,
                max_queue_size=5,
                max_concurrency=1,
                timeout=30,
            )
        )
        # One in flight, 5 queued, 4 spilled: they wait in the file.
        for n in range(10):
            sdk.track("early", {"n": n}, uuid=f"u{n}")
        wait_until(lambda: sdk.stats()["outbox_pending"] == 10, 5, "the first commits")
        (path,) = outbox.glob("*.db")
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON calls"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        for n in range(10, 30):  # spilled too: the commit failing takes them
            sdk.track("burst", {"n": n}, uuid=f"u{n}")
        wait_until(lambda: "carried over" in caplog.text, 10, "the commit to fail")
        wait_until(lambda: sdk.stats()["outbox_pending"] == 30, 5, "the next commit")
        stats = sdk.stats()
        kept = on_disk(outbox)  # what a crash now would leave to the next process
        (fresh,) = outbox.glob("*.db")
        # Every call delivered, and with it every row deleted: the carried-over rows of
        # the calls the scheduler held (u0-u5) under their new row ids too.
        answer.set()
        assert sdk.flush(10)
        wait_until(lambda: sdk.stats()["outbox_pending"] == 0, 5, "every row deleted")
        sdk.shutdown()
        assert delivered(api) == set(range(30))
    assert fresh != path
    assert kept == set(range(30)), (sorted(kept), stats)
    (line,) = [r.getMessage() for r in caplog.records if "carried over" in r.getMessage()]
    assert "10 calls read from it" in line and "it was removed" in line, line
    assert stats["outbox_dropped"] == 0, stats
    assert list(outbox.iterdir()) == []  # the old file removed, the fresh one empty


FORK_MID_BURST = """
import json, os, sys
from atrack_core import ATrackSdk, Options

url, outbox = sys.argv[1], sys.argv[2]
lost = []
sdk = ATrackSdk(
    Options(
        "@KEY@",
        endpoint=url,
        outbox=outbox,
        max_queue_size=10,
        max_concurrency=2,
        on_error=lambda call, error: lost.append(call.uuid),
    )
)
for n in range(60):
    sdk.track("burst", {"n": n}, uuid=f"p{n}")
pid = os.fork()
who = "c" if pid == 0 else "p"
first = 0 if pid == 0 else 60
for n in range(first, first + 60):
    sdk.track("burst", {"n": n}, uuid=f"{who}{n}")
flushed = sdk.flush(15)
stats = sdk.stats()
sdk.shutdown()
print(json.dumps({"who": who, "flushed": flushed, "stats": stats, "lost": lost}), flush=True)
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
""".replace("@KEY@", KEY)


def test_a_fork_in_the_middle_of_a_spilling_burst_loses_no_call_of_either_process(
    tmp_path: Path,
) -> None:
    """The parent forks with calls queued and spilled to its file (a slow API, a
    10-call queue); each process then makes 60 more: every call of each is delivered
    once, by its own process, or counted and reported by it."""
    with FakeApi() as api:
        api.latency = 0.01
        child = spawn(FORK_MID_BURST, api.url, str(tmp_path / "ob"))
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        received = [(r.body["uuid"], r.headers["x-a-track-request-id"]) for r in api.received]
        statuses = {r.status for r in api.received}
    assert statuses == {200}
    results = {r["who"]: r for r in map(json.loads, out.splitlines())}
    made = {"p": {f"p{n}" for n in range(120)}, "c": {f"c{n}" for n in range(60)}}
    for who, result in results.items():
        stats, lost = result["stats"], set(result["lost"])
        assert result["flushed"], result
        sent = {uuid for uuid, _ in received if uuid[0] == who}
        assert made[who] - sent - lost == set(), result
        assert stats["sent"] == len(sent), result  # this process's calls, each once
        assert len(lost) == stats["dropped"] + stats["failed"], result
        assert stats["outbox_spilled"] > 0, result
    assert len({rid for _, rid in received}) == len(received)  # none sent twice
    assert set(results) == {"p", "c"}


def test_a_call_in_flight_at_shutdown_that_then_fails_is_kept_not_also_reported(
    tmp_path: Path,
) -> None:
    """Calls written to the file and in flight when the SDK shuts down, answered 503
    after it: their rows stay in the file for the next process, so they are parked, not
    also reported to on_error and counted failed (they were both: a call counted lost
    here and delivered by the next process)."""
    outbox = tmp_path / "ob"
    ledger = Ledger()
    with FakeApi() as api:
        answer = threading.Event()
        api.default = Plan(503, hold=answer)
        sdk = ATrackSdk(
            Options(
                KEY,
                endpoint=api.url,
                outbox=outbox,
                max_concurrency=4,
                on_error=ledger,
                shutdown_timeout=0.2,
            )
        )
        for n in range(20):
            sdk.track("held", {"n": n}, uuid=f"u{n}")
        api.wait_for(4)
        wait_until(lambda: sdk.stats()["outbox_pending"] == 20, 5, "the calls written")
        sdk.shutdown()  # 4 in flight, held: the flush runs out of time
        answer.set()  # then each is answered 503
        wait_until(lambda: sdk.stats()["in_flight"] == 0, 5, "the calls in flight")
        stats = sdk.stats()
    kept = on_disk(outbox)
    assert kept == set(range(20)), stats
    assert ledger.lost == {}, stats
    assert stats["failed"] == stats["dropped"] == 0, stats
    assert stats["outbox_parked"] == 4, stats

    # The next SDK delivers every one of them.
    with FakeApi() as api:
        sdk = ATrackSdk(Options(KEY, endpoint=api.url, outbox=outbox))
        assert sdk.flush(10)
        sdk.shutdown()
        assert delivered(api) == set(range(20))
    assert on_disk(outbox) == set()


FORK_CLOSE_WHILE_STARTING = """
import os, sys, threading
from atrack_core import ATrackSdk, Options

url, outbox = sys.argv[1], sys.argv[2]
sdk = ATrackSdk(Options("@KEY@", endpoint=url, outbox=outbox, shutdown_timeout=0.2))
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sdk.shutdown()
    sys.exit(os.waitstatus_to_exitcode(status))
# The child's writer starts with its first call. Another thread shuts the SDK down just
# as that start has begun (the thread made and published, not yet running), and the
# process ends as soon as the shutdown returns.
start = threading.Thread.start


def start_late(thread):
    if thread.name == "atrack-outbox":
        closer = threading.Thread(target=sdk.shutdown)
        start(closer)
        closer.join()
        print("closed", flush=True)
        os._exit(0)
    start(thread)


threading.Thread.start = start_late
sdk.track("child", uuid="u1")
os._exit(1)  # not reached
""".replace("@KEY@", KEY)


def test_a_shutdown_while_the_writer_is_starting_writes_what_it_was_handed(
    tmp_path: Path,
) -> None:
    """close() found the writer's thread published but not yet running (is_alive()
    false) and returned without waiting: a process that ended then lost the calls the
    outbox had been handed (here a forked child's first call, in flight against an API
    holding its answer). close() now does the writer's work itself in that case."""
    outbox = tmp_path / "ob"
    with FakeApi() as api:
        answer = threading.Event()
        api.default = Plan(hold=answer)
        child = spawn(FORK_CLOSE_WHILE_STARTING, api.url, str(outbox))
        try:
            out, _ = child.communicate(timeout=20)
        finally:
            answer.set()
        assert child.returncode == 0, out
        assert out == "closed\n"
    assert on_disk(outbox) == {1}
