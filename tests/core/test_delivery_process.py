"""Delivery across process boundaries: the exit flush and os.fork(), in subprocesses.

Timing bounds here are behaviour checks with generous margins (the machine is shared),
not benchmarks: bench/bench_exit.py measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fake_api import FakeApi, Plan, blackhole_url, closed_port_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

KEY = "pub_live_secretkey_9z8y"
ROOT = Path(__file__).resolve().parents[2]
PYENV = Path.home() / ".pyenv" / "versions"

EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from atrack_core import ATrackSdk, Options

    url, shutdown_timeout, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    transport = sys.argv[4] if len(sys.argv) > 4 else "auto"
    sdk = ATrackSdk(
        Options(@KEY@, endpoint=url, shutdown_timeout=shutdown_timeout, transport=transport)
    )
    for i in range(count):
        sdk.track("e", {"i": i}, uuid=f"u{i % 50}")
    print("queued-at-exit", sdk.stats()["queued"], flush=True)
    # No flush, no shutdown: the exit flush has to do it.
    """
).replace("@KEY@", repr(KEY))


def interpreters() -> list[str]:
    """The venv's Python, plus other installed versions (pyenv) that can import the
    SDK's pure-Python dependencies from the venv: 3.12+ changed thread and atexit
    ordering at shutdown, which the exit flush must survive."""
    found = [sys.executable]
    for version in ("3.10", "3.12", "3.13"):
        candidates = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
        if candidates:
            found.append(str(candidates[-1]))
    return found


def runs() -> list[tuple[str, str]]:
    """(interpreter, transport): the venv's Python with both transports; the others
    with httpx (pycurl is compiled for the venv's Python only)."""
    first, *others = interpreters()
    return [(first, "httpx"), (first, "curl"), *[(python, "httpx") for python in others]]


def run_id(run: tuple[str, str]) -> str:
    return f"{Path(run[0]).name}-{run[1]}"


def run(python: str, script: str, *args: str, timeout: float = 40) -> tuple[float, str, str]:
    env = dict(os.environ)
    # Other interpreters borrow the venv's pure-Python packages (httpx, h11, ...).
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
    start = time.monotonic()
    proc = subprocess.run(
        [python, "-W", "ignore::DeprecationWarning", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return elapsed, proc.stdout, proc.stderr


def startup_time(python: str) -> float:
    elapsed, _, _ = run(python, "import atrack_core")
    return elapsed


@pytest.mark.parametrize(("python", "transport"), runs(), ids=run_id)
def test_exit_flush_delivers_what_was_queued(
    fake_api: FakeApi, python: str, transport: str
) -> None:
    fake_api.latency = 0.02
    _, out, err = run(python, EXIT_SCRIPT, fake_api.url, "5", "300", transport)
    assert int(out.split()[-1]) > 0  # calls were still waiting when the script ended
    ids = Counter(fake_api.request_ids())
    assert len(ids) == 300
    assert max(ids.values()) == 1
    assert sorted(b["attributes"]["i"] for b in fake_api.bodies()) == list(range(300))
    assert KEY not in err


@pytest.mark.parametrize(("python", "transport"), runs(), ids=run_id)
def test_exit_is_bounded_when_the_api_refuses_connections(python: str, transport: str) -> None:
    base = startup_time(python)
    elapsed, _, err = run(python, EXIT_SCRIPT, closed_port_url(), "1", "200", transport)
    # shutdown_timeout is 1 s; generous margin for a loaded machine.
    assert elapsed - base < 4.0, (elapsed, base)
    assert "not delivered" in err  # the lost calls are logged at WARNING
    assert KEY not in err


def test_exit_is_bounded_when_the_api_never_answers(transport: str) -> None:
    base = startup_time(sys.executable)
    with blackhole_url() as url:
        elapsed, _, err = run(sys.executable, EXIT_SCRIPT, url, "1", "200", transport)
    # Each attempt would wait timeout=5 s; the exit flush stops at shutdown_timeout=1 s.
    assert elapsed - base < 4.0, (elapsed, base)
    assert "not delivered" in err


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    sdk.send_init("parent-user", True)
    for i in range(40):
        sdk.track("parent", {"i": i}, uuid="parent-user")  # all wait for the /init
    queued = sdk.stats()["queued"]
    pid = os.fork()
    if pid == 0:
        # The child: its own calls only, delivered by the exit flush.
        for i in range(10):
            sdk.track("child", {"i": i}, uuid="child-user")
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert sdk.flush(20)
    print("queued-at-fork", queued, "child", os.waitstatus_to_exitcode(status), flush=True)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_sends_its_own_calls_and_never_the_parents(
    fake_api: FakeApi, transport: str
) -> None:
    fake_api.latency = 0.01
    fake_api.plan("/init", Plan(delay=0.3))  # the parent's calls are still queued at fork
    _, out, _ = run(sys.executable, FORK_SCRIPT, fake_api.url, transport)
    words = out.split()
    assert int(words[1]) > 0  # the parent still had calls queued when it forked
    assert words[3] == "0"  # the child exited cleanly
    ids = Counter(fake_api.request_ids())
    assert max(ids.values()) == 1
    events = fake_api.bodies("/event")
    parent = sorted(b["attributes"]["i"] for b in events if b["event"] == "parent")
    child = sorted(b["attributes"]["i"] for b in events if b["event"] == "child")
    assert parent == list(range(40))  # each exactly once: the child sent none of them
    assert child == list(range(10))


FORK_STRESS_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from atrack_core import ATrackSdk, Options

    sdk = ATrackSdk(Options(@KEY@, endpoint=sys.argv[1], transport=sys.argv[2]))
    stop = threading.Event()

    def hammer():
        # Keeps the SDK's locks busy, so some forks happen while another thread holds one.
        i = 0
        while not stop.is_set():
            sdk.track("busy", uuid=f"b{i % 20}")
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    codes = []
    for n in range(8):
        time.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            sdk.track("child", {"n": n}, uuid=f"child-{n}")
            ok = sdk.flush(15)
            st = sdk.stats()
            if not (ok and st["sent"] == 1 and st["enqueued"] == 1):
                print("child", n, ok, st, file=sys.stderr, flush=True)
                os._exit(3)
            os._exit(0)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:  # a deadlocked child
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                codes.append("hung")
                break
            time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    print(*codes, flush=True)
    sdk.shutdown(timeout=0.5)
    """
).replace("@KEY@", repr(KEY))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_other_threads_use_the_sdk(fake_api: FakeApi, transport: str) -> None:
    fake_api.default = Plan(delay=0.005)
    _, out, err = run(sys.executable, FORK_STRESS_SCRIPT, fake_api.url, transport)
    assert out.split() == ["0"] * 8, err
    children = sorted(b["attributes"]["n"] for b in fake_api.bodies() if b["event"] == "child")
    assert children == list(range(8))


ID_FORK_SCRIPT = textwrap.dedent(
    """
    import ctypes, os, sys
    from atrack_core import _retry
    from atrack_core._call import Call

    def ids(n):
        out = []
        for _ in range(n):
            call = Call("/event", "u", b"{}")
            _retry.prepare(call, "k")
            out.append(call.request_id)
        return out

    ids(1)  # this process's supply of request ids is made
    read, write = os.pipe()
    # "raw": libc's fork() itself, as a C extension forks: Python's fork hooks do not run
    pid = ctypes.PyDLL(None).fork() if sys.argv[1] == "raw" else os.fork()
    if pid == 0:
        os.write(write, " ".join(ids(5)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 65536).decode().split()
    parent = ids(5)
    print(len(set(child)), len(set(parent)), len(set(child) & set(parent)))
    """
)


@pytest.mark.parametrize("fork", ["os", "raw"])
def test_a_forked_child_never_takes_request_ids_of_its_parent(fork: str) -> None:
    """Request ids come from a per-process supply: a child forked with that supply in
    memory makes its own (the API drops a repeated id as a duplicate)."""
    _, out, _ = run(sys.executable, ID_FORK_SCRIPT, fork)
    assert out.split() == ["5", "5", "0"]
