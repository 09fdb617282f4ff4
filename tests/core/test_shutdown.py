"""How a process ends: one exit deadline for all SDKs, the SIGTERM flush, and
multiprocessing children. Each case runs a real Python subprocess.

Timing bounds are behaviour checks with generous margins (the machine is shared).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from atrack_core import ATrackSdk, Options
from tests.fake_api import FakeApi, blackhole_url, closed_port_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

KEY = "pub_live_shutdown_4321"
ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT)
    out.pop("ATRACK_SIGTERM_FLUSH", None)
    out.update(extra)
    return out


def run(script: str, *args: str, timeout: float = 60, **extra: str) -> tuple[float, str, str]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra),
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return elapsed, proc.stdout, proc.stderr


MANY_SDKS = textwrap.dedent(
    """
    import atexit, sys, time
    # Registered before the SDK's hook, so it runs after it (atexit is LIFO): the time
    # the exit flush took, free of the interpreter's start-up and teardown.
    atexit.register(lambda: print("flushed-at", time.monotonic(), flush=True))
    from atrack_core import ATrackSdk, Options

    url, transport = sys.argv[1], sys.argv[2]
    timeouts = [float(t) for t in sys.argv[3].split(",")]
    sdks = [
        ATrackSdk(Options(@KEY@, endpoint=url, shutdown_timeout=t, transport=transport))
        for t in timeouts
    ]
    for n, sdk in enumerate(sdks):
        for i in range(20):
            sdk.track("e", {"i": i}, uuid=f"u{n}-{i}")
    print("ended-at", time.monotonic(), flush=True)
    """
).replace("@KEY@", repr(KEY))


def test_exit_waits_the_largest_shutdown_timeout_not_the_sum(transport: str) -> None:
    timeouts = [1.5, 0.5, 1.5, 1.0, 1.5]  # the sum is 6 s, the largest 1.5 s
    with blackhole_url() as url:
        _, out, err = run(MANY_SDKS, url, transport, ",".join(map(str, timeouts)))
    times = dict(line.split() for line in out.splitlines())
    took = float(times["flushed-at"]) - float(times["ended-at"])
    # It waited for the largest (the API never answers), and not for the sum.
    assert 0.9 * max(timeouts) < took < 1.8 * max(timeouts), took
    lines = [line for line in err.splitlines() if "not delivered" in line]
    assert len(lines) == len(timeouts), err
    # Each SDK names its own bound, not what was left of the shared deadline ("0.0 s").
    named = Counter(line.split("shutdown timeout ")[1].split(" s")[0] for line in lines)
    assert named == {"1.5": 3, "0.5": 1, "1": 1}, err
    assert KEY not in err


UNDELIVERED = textwrap.dedent(
    """
    import sys
    from atrack_core import ATrackSdk, Options

    url, transport = sys.argv[1], sys.argv[2]
    sdk = ATrackSdk(Options(@KEY@, endpoint=url, shutdown_timeout=1.0, transport=transport))
    for i in range(3):
        sdk.track("e", {"i": i}, uuid=f"u{i}")
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.parametrize("api", ["refused", "503"])
def test_the_not_delivered_line_names_the_endpoint_and_the_last_failure(
    api: str, transport: str, fake_api: FakeApi
) -> None:
    # A new user whose collector is not running (or an API that fails) is told where
    # the calls were going and why they did not arrive, not only how many were lost.
    if api == "refused":
        url, reason = closed_port_url(), "ConnectError"
    else:
        fake_api.default_status = 503
        url, reason = fake_api.url, "HTTP 503 from /event"
    _, _, err = run(UNDELIVERED, url, transport)
    [line] = [line for line in err.splitlines() if "not delivered" in line]
    assert f"3 calls not delivered to {url} (shutdown timeout 1 s" in line, line
    assert reason in line.partition("; the last failed attempt: ")[2], line
    assert KEY not in err


LIFESPAN_THEN_CALLS = textwrap.dedent(
    """
    import asyncio, atexit, sys, time
    atexit.register(lambda: print("flushed-at", time.monotonic(), flush=True))
    from atrack_core import ATrackSdk, Options
    from atrack_integrations.asgi import ATrackMiddleware

    url, transport = sys.argv[1], sys.argv[2]
    sdk = ATrackSdk(Options(@KEY@, endpoint=url, shutdown_timeout=1.5, transport=transport))

    async def app(scope, receive, send):
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    async def lifespan():
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        async def receive():
            return messages.pop(0)
        async def send(message):
            pass
        await ATrackMiddleware(app, sdk=sdk)({"type": "lifespan"}, receive, send)

    if sys.argv[3].startswith("calls-before"):
        for i in range(5):
            sdk.track("e", {"i": i}, uuid=f"u{i}")
    print("stopping-at", time.monotonic(), flush=True)
    asyncio.run(lifespan())  # a test client's lifespan, or a server's stop
    print("stopped-at", time.monotonic(), flush=True)
    if sys.argv[3] == "calls-before-then-fork":
        import os
        pid = os.fork()
        if pid:  # the parent leaves it to the child, which reports its own exit
            os.waitpid(pid, 0)
            os._exit(0)
    for i in range(5):
        sdk.track("after", {"i": i}, uuid=f"v{i}")
    print("ended-at", time.monotonic(), flush=True)
    """
).replace("@KEY@", repr(KEY))


def test_the_exit_flush_after_a_lifespan_flush_that_timed_out_keeps_its_deadline(
    transport: str,
) -> None:
    # The lifespan's flush waited the whole 1.5 s for an API that never answers; the
    # exit flush does not wait another 1.5 s (a server's stop took twice its bound).
    with blackhole_url() as url:
        _, out, err = run(LIFESPAN_THEN_CALLS, url, transport, "calls-before")
    times = dict(line.split() for line in out.splitlines())
    waited = float(times["stopped-at"]) - float(times["stopping-at"])
    assert 0.9 * 1.5 < waited < 1.8 * 1.5, waited
    took = float(times["flushed-at"]) - float(times["ended-at"])
    assert took < 0.7, took
    assert "flush at shutdown timed out" in err, err
    assert "10 calls not delivered" in err, err
    # The line's wait counts from the server's stop, where the deadline started: it
    # said "waited 0.00 s" right after the lifespan's flush had waited all of it.
    [line] = [line for line in err.splitlines() if "not delivered" in line]
    said = float(line.split("waited ")[1].split(" s")[0])
    assert said >= 1.5, line  # the lifespan's flush waited until stop + 1.5 s


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_child_forked_after_a_timed_out_lifespan_flush_gets_a_whole_deadline(
    transport: str,
) -> None:
    # The parent's server stop is not the child's: its own calls get its whole 1.5 s.
    with blackhole_url() as url:
        _, out, err = run(LIFESPAN_THEN_CALLS, url, transport, "calls-before-then-fork")
    times = dict(line.split() for line in out.splitlines())
    waited = float(times["stopped-at"]) - float(times["stopping-at"])
    assert 0.9 * 1.5 < waited < 1.8 * 1.5, waited  # the lifespan's flush ran out
    took = float(times["flushed-at"]) - float(times["ended-at"])
    assert 0.9 * 1.5 < took < 1.8 * 1.5, took
    assert "5 calls not delivered" in err, err


def test_the_exit_flush_after_a_lifespan_flush_that_delivered_all_gets_a_whole_deadline(
    transport: str,
) -> None:
    # Nothing was queued at the lifespan's stop (a test client's, say): calls made
    # after it are new, and the exit flush waits its whole shutdown_timeout for them.
    with blackhole_url() as url:
        _, out, err = run(LIFESPAN_THEN_CALLS, url, transport, "none-before")
    times = dict(line.split() for line in out.splitlines())
    took = float(times["flushed-at"]) - float(times["ended-at"])
    assert 0.9 * 1.5 < took < 1.8 * 1.5, took
    assert "flush at shutdown timed out" not in err, err
    assert "5 calls not delivered" in err, err


LIFESPAN_WITH_OUTBOX = textwrap.dedent(
    """
    import asyncio, sys
    from atrack_core import ATrackSdk, Options
    from atrack_integrations.asgi import ATrackMiddleware

    url, transport, outbox = sys.argv[1], sys.argv[2], sys.argv[3]
    sdk = ATrackSdk(
        Options(@KEY@, endpoint=url, shutdown_timeout=0.5, transport=transport, outbox=outbox)
    )

    async def app(scope, receive, send):
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    async def lifespan():
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        async def receive():
            return messages.pop(0)
        async def send(message):
            pass
        await ATrackMiddleware(app, sdk=sdk)({"type": "lifespan"}, receive, send)

    for i in range(5):
        sdk.track("e", {"i": i}, uuid=f"u{i}")
    asyncio.run(lifespan())
    """
).replace("@KEY@", repr(KEY))


def test_a_stop_that_runs_out_with_an_outbox_does_not_say_the_calls_are_dropped(
    transport: str, fake_api: FakeApi, tmp_path: Path
) -> None:
    # uvicorn stopped with the API down and ATRACK_OUTBOX set logged "undelivered calls
    # are dropped" and "5 calls not delivered": an operator went looking for lost data
    # that the next process delivered.
    outbox = str(tmp_path / "outbox")
    with blackhole_url() as url:
        _, _, err = run(LIFESPAN_WITH_OUTBOX, url, transport, outbox)
    [stop] = [line for line in err.splitlines() if "flush at shutdown timed out" in line]
    assert "dropped" not in stop and "stay in it for the next process" in stop, stop
    [line] = [line for line in err.splitlines() if "not delivered" in line]
    assert "5 calls not delivered" in line and "; the outbox keeps those it wrote" in line
    # What the lines say: the next SDK using the directory sends them.
    with ATrackSdk(Options(KEY, endpoint=fake_api.url, outbox=outbox)) as sdk:
        assert sdk.flush(10) is True
    assert sorted(r.body["uuid"] for r in fake_api.received if r.path == "/event") == [
        f"u{i}" for i in range(5)
    ]


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, select, signal, sys, threading
    from atrack_core import ATrackSdk, Options

    url, transport, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    own = len(sys.argv) > 4 and sys.argv[4] == "own-handler"
    if own:
        def host_handler(signum, frame):
            os.write(1, b"host-handler\\n")  # print() here can re-enter the main one
            sys.exit(0)
        signal.signal(signal.SIGTERM, host_handler)
    sdk = ATrackSdk(Options(@KEY@, endpoint=url, transport=transport))
    print("handler", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
    for i in range(count):
        sdk.track("e", {"i": i}, uuid=f"u{i % 10}")
    print("queued", sdk.stats()["queued"] + sdk.stats()["in_flight"], flush=True)
    if own:
        # A host with a handler of its own waits as an event loop does, on the wakeup
        # fd: a bare Event().wait() can miss a signal that arrives just before it
        # blocks (CPython's race, the host's to handle: docs/deployment.md).
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)
        while True:
            select.select([r], [], [])
            os.read(r, 64)
    threading.Event().wait()  # a server's main loop: it never returns by itself
    """
).replace("@KEY@", repr(KEY))


def start_and_terminate(
    url: str, transport: str, count: int, *args: str, **extra: str
) -> tuple[int, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, url, transport, str(count), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**extra),
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    assert lines[1].startswith("queued"), [*lines, proc.stderr.read() if proc.stderr else ""]
    out, _err = sigterm_and_wait(proc)
    return proc.returncode, lines + out.split("\n")


def sigterm_and_wait(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM ``proc`` and read its output until it ends (30 s at most: a hang is
    killed, so no process is left behind for the next tests)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_without_a_host_handler_flushes_then_dies_by_sigterm(
    fake_api: FakeApi, transport: str
) -> None:
    fake_api.latency = 0.05
    code, lines = start_and_terminate(fake_api.url, transport, 100)
    assert lines[0] == "handler False"  # the SDK installed its own
    assert int(lines[1].split()[1]) > 0  # calls were still queued at SIGTERM
    assert code == -signal.SIGTERM  # the process ends as it would have
    ids = Counter(fake_api.request_ids())
    assert len(ids) == 100 and max(ids.values()) == 1
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(100))


def test_sigterm_handler_of_the_host_is_never_replaced(fake_api: FakeApi) -> None:
    code, lines = start_and_terminate(fake_api.url, "httpx", 5, "own-handler")
    assert lines[0] == "handler False"  # not SIG_DFL: the host's own handler
    assert "host-handler" in lines
    assert code == 0  # the host's handler ran (sys.exit(0)), then the exit flush
    assert len(fake_api.bodies()) == 5


@contextlib.contextmanager
def parked(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``script`` started with pipes on all three streams; once it prints ``parked``,
    ``go`` on its stdin (its host thread then signals itself). Killed if still running
    when the block ends; its pipes are closed whatever happened (left open, they fail
    a later test with a ResourceWarning)."""
    with subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "parked", stderr_if_ended(proc)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def stderr_if_ended(proc: subprocess.Popen[str]) -> str:
    """What a process that ended early wrote to stderr (for an assertion's message)."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return "(still running)"
    return proc.stderr.read() if proc.stderr is not None else ""


PARKED_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    for i in range(50):
        sdk.track("e", {"i": i}, uuid=f"u{i % 10}")

    def host_thread():  # a thread of the host's that does not block SIGTERM
        sys.stdin.readline()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=host_thread, daemon=True).start()
    print("parked", flush=True)
    threading.Event().wait()  # untimed: only a signal delivered to this thread wakes it
    """
).replace("@KEY@", repr(KEY))


def test_sigterm_the_parked_main_thread_never_saw_still_flushes_and_ends(
    fake_api: FakeApi, transport: str
) -> None:
    """The SIGTERM lands on another thread (or just before the main thread blocks): the
    interpreter notes it, but its handler runs only when the main thread's wait returns,
    which is never. The SDK's watcher sees it on the wakeup fd, flushes, and wakes the
    main thread; the process ends by SIGTERM, as it would have without the SDK."""
    fake_api.latency = 0.05
    with parked(PARKED_SCRIPT, fake_api.url, transport) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(50))


SECOND_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from atrack_core import ATrackSdk, Options

    # The API never answers: the flush would take the whole shutdown timeout.
    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], shutdown_timeout=30))
    sdk.track("e", uuid="u")

    def host_thread():  # both SIGTERMs land here: the main thread never sees them
        sys.stdin.readline()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        print("first", flush=True)
        sys.stdin.readline()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=host_thread, daemon=True).start()
    # Not print(): with a buffered stdout (no PYTHONUNBUFFERED, as under tox), a SIGTERM
    # that comes before the main thread is back from the write runs the handler inside
    # print, which holds stdout's lock all through the flush: "first" waited for it.
    os.write(1, b"parked\\n")
    if sys.argv[2] == "busy":  # the main thread sees the SIGTERM: its handler flushes
        while True:
            time.sleep(0.01)
    threading.Event().wait()
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.parametrize("main", ["parked", "busy"])
def test_second_sigterm_while_the_watcher_flushes_ends_the_process_at_once(main: str) -> None:
    """The watcher flushes for a main thread parked in an untimed wait; a second
    SIGTERM meanwhile (an impatient supervisor) ends the process at once, as it does
    when the handler runs the flush (it used to wait out the whole flush). "busy": a
    main thread that runs its handler itself (the watcher may have started the flush).
    """
    with blackhole_url() as url, parked(SECOND_SIGTERM_SCRIPT, url, main) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "first", stderr_if_ended(proc)
        start = time.monotonic()
        _, err = proc.communicate("again\n", timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert time.monotonic() - start < 10.0  # not the 30 s shutdown timeout


TWO_AT_ONCE_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading, time
    from atrack_core import ATrackSdk, Options

    # The API never answers: the flush would take the whole shutdown timeout.
    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], shutdown_timeout=30))
    sdk.track("e", uuid="u")

    def host_thread():  # two SIGTERMs before the main thread can run its handler
        sys.stdin.readline()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=host_thread, daemon=True).start()
    print("parked", flush=True)
    while True:
        time.sleep(0.01)
    """
).replace("@KEY@", repr(KEY))


def test_two_sigterms_before_the_handler_runs_end_the_process_at_once() -> None:
    """The interpreter notes "SIGTERM pending", not how many: two make one handler call.
    The second still ends the process at once, whether the handler or the watcher
    sees them first (it waited out the whole flush when the handler ran before the
    watcher read the pipe: 2 runs in 100 under load)."""
    with blackhole_url() as url, parked(TWO_AT_ONCE_SCRIPT, url) as proc:
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert time.monotonic() - start < 10.0, err  # not the 30 s shutdown timeout


STUCK_FLUSH_SCRIPT = textwrap.dedent(
    """
    import logging, signal, sys, threading, time
    from atrack_core import ATrackSdk, Options

    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("atrack").addHandler(handler)
    # The API never answers; the flush gives up at 1 s and logs what it left.
    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], shutdown_timeout=1.0))
    sdk.track("e", uuid="u")

    def host_thread():
        sys.stdin.readline()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=host_thread, daemon=True).start()
    # The main thread interrupted while it holds the log handler's lock (inside a log
    # call of its own): the flush's log line then waits for ever.
    handler.acquire()
    print("parked", flush=True)
    if sys.argv[2] == "busy":  # the main thread sees the SIGTERM: its handler waits too
        while True:
            time.sleep(0.01)
    threading.Event().wait()
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.parametrize("main", ["parked", "busy"])
def test_a_stuck_sigterm_flush_is_given_up_and_said_so(main: str) -> None:
    """A flush stuck behind a lock the interrupted main thread holds is given up after
    its deadline, with a line on stderr (logging would wait on that lock too): the
    process still ends by SIGTERM (it used to end without a word). "busy": the handler
    and the watcher both wait for the flush, to the same deadline; the one that gives
    up second waits for the other's line (it ended the process before the line was
    out: 20 runs in 20)."""
    with blackhole_url() as url, parked(STUCK_FLUSH_SCRIPT, url, main) as proc:
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert "A-Track SIGTERM flush did not end within 2.0 s" in err, err
    assert time.monotonic() - start < 10.0, err


DURING_EXIT_FLUSH_SCRIPT = textwrap.dedent(
    """
    import atexit, signal, sys, threading, time
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    for i in range(20):
        sdk.track("e", {"i": i}, uuid=f"u{i % 4}")
    exiting = threading.Event()

    def terminate_soon():  # SIGTERM to the main thread inside the SDK's exit flush
        exiting.wait()
        time.sleep(0.1)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    threading.Thread(target=terminate_soon, daemon=True).start()
    atexit.register(exiting.set)  # runs first: registered after the SDK's
    print("exiting", flush=True)
    """
).replace("@KEY@", repr(KEY))


def test_a_sigterm_during_the_exit_flush_lets_it_finish(fake_api: FakeApi, transport: str) -> None:
    """A ``spawn`` Pool worker leaves through ``sys.exit`` and is terminated meanwhile:
    the SIGTERM interrupts the exit flush, which may hold the locks another flush
    needs. That flush finishes, then the process ends by SIGTERM."""
    fake_api.latency = 0.3
    proc = subprocess.run(
        [sys.executable, "-c", DURING_EXIT_FLUSH_SCRIPT, fake_api.url, transport],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert proc.stdout.split() == ["exiting"], proc.stderr
    got = sorted(b["attributes"]["i"] for b in fake_api.bodies())
    assert got == list(range(20)), proc.stderr


FORK_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    # Children killed the moment they exist: none of their SIGTERMs reaches the
    # parent's watcher (they share its pipe until they drop it).
    for _ in range(30):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(3)
        os.kill(pid, signal.SIGTERM)
        print("idle", os.waitpid(pid, 0)[1], flush=True)
    # A child with calls queued flushes them on SIGTERM, then dies by it.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for i in range(20):
            sdk.track("child", {"i": i}, uuid=f"c{i % 4}")
        os.write(w, b"x")
        time.sleep(30)
        os._exit(3)
    os.read(r, 1)
    os.kill(pid, signal.SIGTERM)
    print("busy", os.waitpid(pid, 0)[1], flush=True)
    print("parent-alive", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_on_sigterm(fake_api: FakeApi, transport: str) -> None:
    fake_api.latency = 0.05
    _, out, err = run(FORK_SIGTERM_SCRIPT, fake_api.url, transport)
    lines = out.splitlines()
    # A child with nothing to deliver dies at once, as without the SDK (status 15 is
    # "killed by SIGTERM" in waitpid's encoding); the parent is never touched.
    assert lines[:30] == [f"idle {signal.SIGTERM}"] * 30, out + err
    assert lines[30:] == [f"busy {signal.SIGTERM}", "parent-alive True"], out + err
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(20))


FORK_RACE_SCRIPT = textwrap.dedent(
    """
    import logging, os, signal, sys, threading

    # Registered after logging's hook and before the SDK's: os.fork runs "before" hooks
    # in reverse order, so in the main thread's fork this one runs after the SDK's
    # (SIGTERM blocked for the fork) and lets a host thread fork meanwhile.
    go, forked = threading.Event(), threading.Event()

    def between():
        if threading.current_thread() is threading.main_thread():
            go.set()
            forked.wait()

    os.register_at_fork(before=between)
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1]))

    def host_thread():  # keeps SIGTERM blocked (a sigwait() thread, say), and forks
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        go.wait()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print("host-thread", signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ()))
        forked.set()

    thread = threading.Thread(target=host_thread)
    thread.start()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        os.write(w, b"1" if blocked else b"0")
        os._exit(0)
    print("child", os.read(r, 1) == b"1")
    os.waitpid(pid, 0)
    thread.join()
    print("main", signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ()), flush=True)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_beside_a_thread_that_blocks_sigterm_leaves_each_mask_as_it_was() -> None:
    """SIGTERM is blocked in the forking thread around fork() and unblocked after: per
    thread. Another thread's fork meanwhile (one that keeps SIGTERM blocked itself) left
    it blocked for good in the main thread and in its child, deaf to SIGTERM."""
    _, out, err = run(FORK_RACE_SCRIPT, closed_port_url())
    assert out.split("\n")[:3] == ["host-thread True", "child False", "main False"], out + err


NO_THREAD_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    print("built", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,
          *sorted(t.name for t in threading.enumerate()), flush=True)
    sdk.track("e", uuid="u")
    assert sdk.flush(10)
    print("delivered", *sorted({t.name for t in threading.enumerate()}), flush=True)
    """
).replace("@KEY@", repr(KEY))


def test_no_thread_before_the_first_delivery(fake_api: FakeApi, transport: str) -> None:
    """Building an SDK starts no thread (a later fork, a gunicorn ``--preload`` master's,
    stays that of a single-threaded process: Python 3.12+ warns otherwise); the SIGTERM
    watcher starts with the first delivery thread."""
    _, out, err = run(NO_THREAD_SCRIPT, fake_api.url, transport)
    built, delivered = out.splitlines()
    assert built == "built True MainThread", out + err
    assert "atrack-signals" in delivered.split(), out


def test_sigterm_flush_can_be_turned_off(fake_api: FakeApi) -> None:
    fake_api.latency = 0.05
    code, lines = start_and_terminate(fake_api.url, "httpx", 100, ATRACK_SIGTERM_FLUSH="0")
    assert lines[0] == "handler True"  # left alone
    assert code == -signal.SIGTERM


POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from atrack_core import ATrackSdk, Options

    url, transport, how = sys.argv[1], sys.argv[2], sys.argv[3]
    method = sys.argv[4] if len(sys.argv) > 4 else "fork"
    sdk = ATrackSdk(Options(@KEY@, endpoint=url, transport=transport))

    def work(i):
        sdk.track("child", {"i": i}, uuid=f"u{i}")
        return i

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(method)
        if how == "with":  # Pool.__exit__ terminates the workers (SIGTERM)
            with ctx.Pool(4) as pool:
                assert pool.map(work, range(25)) == list(range(25))
        elif how == "close":  # workers end on their own, through os._exit
            pool = ctx.Pool(4)
            assert pool.map(work, range(25)) == list(range(25))
            pool.close()
            pool.join()
        else:  # Process children
            procs = [ctx.Process(target=work, args=(i,)) for i in range(25)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        print("parent-sent", sdk.stats()["enqueued"], flush=True)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize(
    ("how", "sigterm"),
    [("with", "1"), ("close", "1"), ("close", "0"), ("process", "0")],
    ids=["pool-terminated", "pool-closed", "pool-closed-no-sigterm-flush", "process"],
)
def test_multiprocessing_children_deliver_their_calls(
    fake_api: FakeApi, transport: str, how: str, sigterm: str
) -> None:
    fake_api.latency = 0.05  # every call is still queued when its child leaves
    _, out, err = run(
        POOL_SCRIPT,
        fake_api.url,
        transport,
        how,
        ATRACK_SIGTERM_FLUSH=sigterm,
    )
    assert out.split() == ["parent-sent", "0"], err
    try:
        fake_api.wait_for(25)
    except AssertionError as lost:  # the workers' own words (they share stderr)
        raise AssertionError(f"{lost}; stderr: {err[-3000:]}") from None
    ids = Counter(fake_api.request_ids())
    assert max(ids.values()) == 1
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(25))


CHILD_THREADS_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, threading
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1]))

    def names(_):
        return sorted(t.name for t in threading.enumerate())

    if __name__ == "__main__":
        with multiprocessing.get_context(sys.argv[2]).Pool(2) as pool:
            for row in pool.map(names, range(4)):
                print(*row)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_pool_workers_watch_for_sigterm_before_they_deliver(
    method: str, tmp_path: Path
) -> None:
    """A spawn/forkserver worker builds its SDK while importing the main module, before
    multiprocessing marks it a child: its watcher must start then all the same (without
    it, a worker with nothing delivered hung when the pool terminated it)."""
    script = tmp_path / "threads_script.py"
    script.write_text(CHILD_THREADS_SCRIPT)
    with blackhole_url() as url:
        proc = subprocess.run(
            [sys.executable, str(script), url, method],
            capture_output=True,
            text=True,
            timeout=60,
            env=env(),
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["MainThread atrack-signals"] * 4, proc.stderr


@pytest.mark.parametrize(
    "how",
    ["with", "close"],
    ids=["pool-terminated", "pool-closed"],
)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_spawned_children_deliver_their_calls(
    fake_api: FakeApi, transport: str, how: str, method: str, tmp_path: Path
) -> None:
    """spawn and forkserver children import the script and build their own SDK (3.14
    makes forkserver the default on Linux): the same flush must run in them."""
    if method == "forkserver" and sys.platform == "win32":
        pytest.skip("no forkserver on Windows")
    script = tmp_path / "pool_script.py"
    script.write_text(POOL_SCRIPT)
    fake_api.latency = 0.05
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), fake_api.url, transport, how, method],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["parent-sent", "0"], proc.stderr
    try:
        fake_api.wait_for(25)
    except AssertionError as lost:  # the workers' own words (they share stderr)
        raise AssertionError(f"{lost}; stderr: {proc.stderr[-3000:]}") from None
    ids = Counter(fake_api.request_ids())
    assert max(ids.values()) == 1
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(25))
    assert time.monotonic() - start < 50


HOST_AFTER_SCRIPT = textwrap.dedent(
    """
    import sys

    url, transport, how = sys.argv[1], sys.argv[2], sys.argv[3]
    if how == "gevent":  # first, as gevent requires
        from gevent import monkey

        monkey.patch_all()
    import os, signal, threading
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=url, transport=transport))
    if how == "chain":
        # A host that installs its handler after the SDK and calls the previous one
        # (the SDK's), as libraries that share SIGTERM do, then decides the exit itself.
        previous = signal.getsignal(signal.SIGTERM)

        def host_handler(signum, frame):
            if callable(previous):
                previous(signum, frame)
            os.write(1, b"host-after-previous\\n")  # print() here can re-enter the main one
            sys.exit(3)

        signal.signal(signal.SIGTERM, host_handler)
    for i in range(20):
        sdk.track("e", {"i": i}, uuid=f"u{i % 10}")
    print("queued", sdk.stats()["queued"] + sdk.stats()["in_flight"], flush=True)
    if how == "chain":
        # A host with a handler of its own waits as servers do, with a timeout: a bare
        # Event().wait() misses, for ever, a signal that lands just before it blocks
        # (CPython's race, the host's to handle: docs/deployment.md). It hung this test
        # 4 runs in about 800 on 3.13, and hangs a script without the SDK as well.
        idle = threading.Event()
        while not idle.wait(0.1):
            pass
    threading.Event().wait()  # under gevent: the main greenlet waits in the hub
    """
).replace("@KEY@", repr(KEY))


BUSY_SCRIPT = textwrap.dedent(
    """
    import sys
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(
        Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2], shutdown_timeout=1.0)
    )
    print("go", flush=True)
    i = 0
    while True:  # the main thread inside the SDK (and its locks) most of the time
        sdk.track("busy", {"i": i}, uuid=f"u{i % 7}")
        i += 1
    """
).replace("@KEY@", repr(KEY))


def terminate_script(script: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("queued"), first + (proc.stderr.read() if proc.stderr else "")
    out, err = sigterm_and_wait(proc)
    return proc.returncode, out, err


def test_sigterm_host_handler_installed_after_the_sdk_keeps_control(fake_api: FakeApi) -> None:
    """The SDK's handler, called by the host's as its previous one, flushes and returns:
    the host's code after it runs and the host decides the exit status (it used to end
    the process by SIGTERM inside the host's handler)."""
    fake_api.latency = 0.05
    code, out, err = terminate_script(HOST_AFTER_SCRIPT, fake_api.url, "httpx", "chain")
    assert "host-after-previous" in out, err
    assert code == 3, err
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(20))


def test_sigterm_under_gevent_while_the_hub_waits(fake_api: FakeApi, transport: str) -> None:
    """A gevent process whose main greenlet waits in the hub (gevent.pywsgi's
    serve_forever, a sleep) runs the SIGTERM handler in the hub, where nothing may block:
    the flush runs in a greenlet, then the process ends by SIGTERM as it would have (it
    used to raise BlockingSwitchOutError into the main greenlet, exit status 1, or to
    block the greenlet it interrupted: a call lost, or a hang)."""
    pytest.importorskip("gevent")
    fake_api.latency = 0.05
    code, _out, err = terminate_script(HOST_AFTER_SCRIPT, fake_api.url, transport, "gevent")
    assert "Traceback" not in err, err
    assert code == -signal.SIGTERM, err
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(20))


GEVENT_HOST_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys

    from gevent import monkey

    monkey.patch_all()
    import os, signal, threading
    from atrack_core import ATrackSdk, Options
    from atrack_core._httpx_transport import HttpxTransport

    url, when = sys.argv[1], sys.argv[2]
    queued = threading.Event()


    # httpx, and the first request after everything was queued SIGTERMs the process from
    # the sender greenlet that makes it: the handler runs there, as it did for a
    # supervisor's SIGTERM in 2 runs of 4 of a script like this one.
    class SignallingTransport(HttpxTransport):

        def connection(self, endpoint):
            conn = super().connection(endpoint)
            send = conn.request

            def request(path, headers, body):
                if queued.is_set() and not os.environ.get("SIGNALLED"):
                    os.environ["SIGNALLED"] = "1"
                    os.kill(os.getpid(), signal.SIGTERM)
                return send(path, headers, body)

            conn.request = request
            return conn

    previous = None

    def host_handler(signum, frame):
        if callable(previous):
            previous(signum, frame)
        os.write(1, b"host-handler\\n")
        sys.exit(3)  # the host's shutdown: SystemExit, then atexit

    if when == "before":
        signal.signal(signal.SIGTERM, host_handler)
    sdk = ATrackSdk(Options(@KEY@, endpoint=url, transport=SignallingTransport()))
    if when == "after":
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, host_handler)
    for i in range(20):
        sdk.track("e", {"i": i}, uuid=f"u{i % 10}")
    queued.set()  # the events wait for their users' /init (50 ms): attempts to come
    idle = threading.Event()
    while not idle.wait(0.1):  # the main greenlet waits in the hub
        pass
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigterm_host_handler_under_gevent_run_in_a_sender_greenlet(
    fake_api: FakeApi, when: str
) -> None:
    """Under gevent a signal handler runs in whichever greenlet runs Python code, an SDK
    sender's included. A host's handler (set before or after the SDK) that ends with
    sys.exit() raised SystemExit there, which the sender's (patched) thread swallowed:
    the process went on as if no SIGTERM had come, and the call being sent was never
    settled (the exit flush waited its whole deadline for it). Now SystemExit reaches
    the main greenlet, the host's exit status stands, and the call goes out."""
    pytest.importorskip("gevent")
    fake_api.latency = 0.05
    proc = subprocess.Popen(
        [sys.executable, "-c", GEVENT_HOST_EXIT_SCRIPT, fake_api.url, when],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # the hang this is about: killed, not left behind
            proc.kill()
            proc.communicate()
    assert "host-handler" in out, err
    assert proc.returncode == 3, err
    assert "not delivered" not in err, err
    ids = Counter(fake_api.request_ids())
    assert len(ids) == 20 and max(ids.values()) == 1
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(20))


def test_sigterm_while_the_main_thread_is_inside_the_sdk_still_ends_the_process(
    fake_api: FakeApi, transport: str
) -> None:
    """The handler interrupts the main thread wherever it is, maybe holding an SDK lock:
    the flush runs in another thread and the wait is bounded, so the process ends."""
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", BUSY_SCRIPT, fake_api.url, transport],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        fake_api.wait_for(len(fake_api.received) + 20)  # it is delivering
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == -signal.SIGTERM
        # shutdown_timeout is 1 s; the handler waits at most that plus 1 s.
        assert time.monotonic() - start < 6.0


THREAD_MASK_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    sdk.track("e", uuid="u")
    assert sdk.flush(10)
    for thread in threading.enumerate():
        with open(f"/proc/self/task/{thread.native_id}/status") as status:
            mask = next(int(l.split()[1], 16) for l in status if l.startswith("SigBlk"))
        blocked = sorted(s for s in (signal.SIGTERM, signal.SIGINT) if mask >> (s - 1) & 1)
        print(thread.name, *(int(s) for s in blocked))
    """
).replace("@KEY@", repr(KEY))


FORK_WHILE_LOCKED = textwrap.dedent(
    """
    import os, sys, threading, time
    from atrack_core import ATrackSdk, Options
    from atrack_core import _shutdown

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], shutdown_timeout=1.0))
    # Another thread inside the exit registry at the moment of the fork (hooking
    # multiprocessing, say). Held here through the private lock: no public call holds
    # it long enough to fork inside it on purpose.
    held, release = threading.Event(), threading.Event()

    def hold():
        with _shutdown._hook_lock:
            held.set()
            release.wait()

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        sdk.track("forked", uuid="u-forked")
        sys.exit(0)  # the exit flush, in a child where that lock stays held
    release.set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            print("child-exited", flush=True)
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child-hung", flush=True)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_sdk_threads_leave_sigterm_and_sigint_to_the_host(
    fake_api: FakeApi, transport: str
) -> None:
    """Signals go to a thread that does not block them; Python runs handlers only in
    the main thread, and since 3.13 a main thread in an untimed wait is not woken when
    the signal landed elsewhere: the SDK's threads block them, the main thread not."""
    _, out, _ = run(THREAD_MASK_SCRIPT, fake_api.url, transport)
    rows = dict((line.split()[0], line.split()[1:]) for line in out.splitlines())
    assert rows.pop("MainThread") == [], out
    assert rows and all(name.startswith("atrack") for name in rows), out
    sigs = [str(s) for s in sorted(int(s) for s in (signal.SIGTERM, signal.SIGINT))]
    assert all(blocked == sigs for blocked in rows.values()), out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_another_thread_holds_the_exit_registry(fake_api: FakeApi) -> None:
    """The child of a fork made while another thread held the exit registry's lock
    still exits and flushes (it waited on the inherited, never released lock for ever)."""
    _, out, err = run(FORK_WHILE_LOCKED, fake_api.url)
    assert out.split() == ["child-exited"], out + err
    fake_api.wait_for(1)
    assert [b["event"] for b in fake_api.bodies()] == ["forked"]
