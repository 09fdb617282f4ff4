"""The SDK's SIGTERM flush, for processes that would otherwise die at once on SIGTERM.

Some servers never run ``atexit`` on SIGTERM (waitress; granian's WSGI and
lifespan-less ASGI workers before 2.x), and a ``multiprocessing`` ``Pool`` terminates
its workers with SIGTERM: with the default disposition the process dies with its queued
calls. When the process still has that default as the first SDK is built in the main
thread, a handler is installed that flushes, then restores the default and raises
SIGTERM again, so the process ends exactly as it would have (status, core, parent's
view). A handler the host set is never replaced; a host that sets one later replaces
this one, and owns shutdown. ``ATRACK_SIGTERM_FLUSH=0`` turns it off.

**The watcher.** Python runs a signal handler in the main thread, between two bytecodes.
A SIGTERM that arrives just before the main thread enters a blocking call (a ``Pool``
worker going back to wait for its next task, a server's ``Event().wait()``) is noted by
the interpreter and then waits until that call returns, which may be never: the process
that would have died hangs, and the ``Pool`` that terminated it hangs in ``join``. So,
when the host has not claimed it, the interpreter's wakeup file descriptor
(``signal.set_wakeup_fd``, written the moment the signal arrives, whatever the main
thread is doing) is a pipe read by an SDK thread. On a SIGTERM the watcher starts the
flush itself, then sends SIGTERM to the main thread, which interrupts its blocking call:
the handler runs there, finds the flush done, and ends the process (it sends it again
until the handler runs: one landing just before the main thread blocks would interrupt
nothing). Whoever starts the flush first (the handler or the watcher) starts it; the
other waits for it. The watcher reads on while it waits: a second SIGTERM then ends the
process at once, as it does once the handler has run (it has put the default
disposition back). The interpreter notes "SIGTERM pending", not how many: two SIGTERMs
before the handler runs make one call, so the watcher counts them on the pipe and ends
the process on the second.

The watcher thread starts with the first delivery thread (or at once in a
``multiprocessing`` child, which a ``Pool`` may terminate before it ever delivered): a
thread from the moment the SDK is built would make every later ``fork()`` that of a
multi-threaded process. A process that never delivered has nothing to flush; parked at
the wrong moment it waits as any Python program with a SIGTERM handler would.

**During the exit flush.** A SIGTERM that interrupts the process's own exit flush in the
main thread (a ``spawn`` worker leaves through ``sys.exit``; its pool terminates it
meanwhile) lets that flush finish, then ends the process: a second flush in another
thread could need a lock the interrupted one holds, and would wait for it until the
deadline. A flush that outlives its deadline all the same is given up, with an error
line.

**Forks.** A forked child shares the parent's pipe: its SIGTERM would reach the parent's
watcher. So SIGTERM is blocked in the forking thread around ``fork()``, and the child
drops the pipe and goes back to the default disposition before unblocking it; the
handler (with a watcher of its own) is installed again in the child only when it has
calls to deliver (:func:`on_delivery_start`, from its main thread). A child with nothing
queued dies on SIGTERM as it would have without the SDK.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from . import _threads

logger = logging.getLogger("atrack")

ENV = "ATRACK_SIGTERM_FLUSH"
_SIGTERM: int | None = getattr(signal, "SIGTERM", None)
_FALLBACK_DEADLINE = 5.0

# Set by the first install: what to flush, and for how long the flush may take.
_flush: Callable[[str], None] | None = None
_deadline: Callable[[], float] = lambda: _FALLBACK_DEADLINE  # noqa: E731 (set at install)

_decided = False  # this process's first main-thread SDK decided
_rearm_wanted = False  # a fork child whose parent had the handler
_pipe: tuple[int, int] | None = None  # the wakeup pipe (read, write) of this process
_watching = False  # the watcher thread of this process started
_watch_lock = threading.Lock()
_handler_started = False  # the handler ran in the main thread
# The forking threads (idents) in which _before_fork blocked SIGTERM: one flag would be
# reset by another thread's fork meanwhile, leaving SIGTERM blocked for good in this
# thread (and in its child) or unblocked in a thread that had blocked it itself.
_fork_blocked: set[int] = set()
_second = False  # the watcher saw a second SIGTERM while the flush ran
_gave_up = False  # the flush outlived its deadline: nobody waits for it again
_exit_flush_running = False  # the main thread runs the process's exit flush
_terminate_after_exit_flush = False  # a SIGTERM came meanwhile

# Whoever takes _claim runs the flush and releases _done when it ends; others wait on
# _done. Bare ``_thread`` locks: the handler may have interrupted the main thread
# inside ``threading``'s own machinery.
_claim = _thread.allocate_lock()
_done = _thread.allocate_lock()
_done.acquire()
# Held by whoever says that the flush was given up, while it says so (up to _LOG_WAIT):
# the other waiter (the handler, the watcher) ends the process when it finds the flush
# given up, and must not end it before the line is out.
_saying = _thread.allocate_lock()
_LOG_WAIT = 0.5  # for logging to take the line, before it goes to stderr directly


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _supported() -> bool:
    return _SIGTERM is not None and sys.platform != "win32"


def maybe_install(flush: Callable[[str], None], deadline: Callable[[], float]) -> None:
    """Decided once per process, by the first SDK built in the main thread (only the
    main thread may set a handler)."""
    global _decided, _flush, _deadline
    if _decided or threading.current_thread() is not threading.main_thread():
        return
    _decided = True
    _flush, _deadline = flush, deadline
    if not enabled() or not _supported():
        return
    # A multiprocessing child (spawn, forkserver) may be terminated before it has ever
    # delivered: its watcher starts now. Elsewhere, with the first delivery thread.
    _install(watch_now=_in_multiprocessing_child())


def _in_multiprocessing_child() -> bool:
    """A spawn or forkserver child builds the SDKs of its main module while importing
    it, before ``parent_process()`` is set (the pool's workers then hung on terminate:
    no watcher); multiprocessing has named the process by then."""
    mp = sys.modules.get("multiprocessing.process")
    if mp is None:
        return False
    return mp.parent_process() is not None or mp.current_process().name != "MainProcess"


def on_delivery_start() -> None:
    """This process starts a delivery thread (it has calls to deliver): the watcher
    thread, if not running yet; in a fork child, the handler again, as its parent had
    it (from the main thread, while the host has not set a handler of its own).

    The watcher is not started with the handler: a thread from the moment the SDK is
    built would make every later ``fork()`` (a gunicorn ``--preload`` master, a fork
    ``Pool``) that of a multi-threaded process (Python 3.12+ warns). Until it starts,
    what the interpreter writes waits in the pipe."""
    global _rearm_wanted
    if _rearm_wanted and threading.current_thread() is threading.main_thread():
        _rearm_wanted = False
        _install(watch_now=True)
        return
    if _pipe is not None and not _watching:
        _start_watch_thread()


def _install(*, watch_now: bool) -> None:
    assert _SIGTERM is not None
    try:
        if signal.getsignal(_SIGTERM) is not signal.SIG_DFL:
            return  # the host handles SIGTERM: its shutdown runs atexit or a lifespan
        signal.signal(_SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # an embedded interpreter without signals
        return
    if _threads.green():  # under gevent the handler spawns a greenlet instead
        return
    _open_pipe()
    if watch_now:
        _start_watch_thread()


def _open_pipe() -> None:
    """The interpreter's wakeup fd becomes our pipe, unless the host has one."""
    global _pipe
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(r)
        os.close(w)
        return
    if previous != -1:  # the host's (asyncio, trio, gunicorn...): theirs, not ours
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)
        return
    _pipe = (r, w)


def _start_watch_thread() -> None:
    global _watching
    if _threads.green():
        # Patched since the handler was installed (gevent patches in main(), after the
        # imports): a "thread" would be a greenlet whose blocking read stops the hub.
        return
    with _watch_lock:
        if _watching or _pipe is None:
            return
        _watching = True
        r = _pipe[0]
    thread = threading.Thread(target=lambda: _watch(r), name="atrack-signals", daemon=True)
    with contextlib.suppress(RuntimeError):  # RuntimeError: interpreter shutting down
        _threads.start(thread)  # born with SIGTERM blocked: it never takes one itself


def _watch(r: int) -> None:
    assert _SIGTERM is not None
    seen = 0  # SIGTERMs read since the handler started
    while True:
        try:
            data = os.read(r, 512)
        except OSError:
            return
        if not data:
            return
        if _SIGTERM not in data or _threads.green():
            continue  # another signal
        if _handler_started:
            # The handler runs the flush. Every SIGTERM caught while it was ours wrote
            # a byte; one handler call may stand for two of them (the interpreter
            # notes "SIGTERM pending", not how many), so a second one, which would
            # have ended the process, would be lost: end it here.
            seen += data.count(_SIGTERM)
            if seen > 1:
                _end_now()
            continue
        if signal.getsignal(_SIGTERM) is not _on_sigterm:
            continue  # the host's handler replaced ours: its signal
        break
    # The main thread may be parked in a call the signal did not interrupt: flush from
    # here, then interrupt it so that the handler runs and ends the process. The flush
    # runs in a thread of its own (born with this one's mask: SIGTERM blocked), and
    # this one keeps reading: a second SIGTERM meanwhile (an impatient supervisor) ends
    # the process at once, as it does when the handler runs the flush.
    global _second
    second = data.count(_SIGTERM) > 1 or _wait_flush_or_sigterm(r)
    if second:
        _second = True
    _interrupt_main_until_handled()
    if second:
        # The handler may have started before _second was set, and then waits for the
        # flush: the process ends from here all the same.
        _end_now()


def _end_now() -> None:
    """End the process by SIGTERM, as a second one would have without the SDK, once the
    handler has put the default disposition back (just after it set _handler_started).
    Not if the host has set a handler of its own meanwhile: its shutdown, then."""
    assert _SIGTERM is not None
    end = time.monotonic() + 1.0
    while signal.getsignal(_SIGTERM) is _on_sigterm and time.monotonic() < end:
        time.sleep(0.001)
    if signal.getsignal(_SIGTERM) is signal.SIG_DFL:
        os.kill(os.getpid(), _SIGTERM)


def _interrupt_main_until_handled() -> None:
    """SIGTERM to the main thread until its handler runs: a signal that lands just
    before the main thread enters its blocking call interrupts nothing (the race the
    watcher is for), so one is not enough."""
    assert _SIGTERM is not None
    main = threading.main_thread().ident
    if main is None:
        return
    pause = 0.01
    while not _handler_started and signal.getsignal(_SIGTERM) is _on_sigterm:
        try:
            signal.pthread_kill(main, _SIGTERM)
        except (OSError, ValueError):  # the main thread has ended
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _wait_flush_or_sigterm(r: int) -> bool:
    """Start the flush unless it has started, then wait for it (at most the deadline)
    or for another SIGTERM on the pipe, whichever comes first: True for a SIGTERM."""
    assert _SIGTERM is not None
    if not _start_flush():
        return False
    poller = select.poll()
    poller.register(r, select.POLLIN)
    waited = _deadline() + 1.0
    end = time.monotonic() + waited
    while not _flush_ended():
        left = end - time.monotonic()
        if left <= 0:
            _give_up(waited)
            return False
        # _flush_then_open writes a byte (0, no signal's number) when it ends.
        if poller.poll(left * 1000):
            try:
                data = os.read(r, 512)
            except OSError:
                return False
            if not data:
                return False
            if _SIGTERM in data:
                return True
    return False


def _flush_ended() -> bool:
    if _done.acquire(blocking=False):
        _done.release()
        return True
    return False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _handler_started, _terminate_after_exit_flush
    if signal.getsignal(signum) is not _on_sigterm:
        # A handler the host installed after the SDK calls this one as its previous
        # handler: flush, and leave the rest (exit or not, with which status) to it.
        _run_flush(terminate=False)
        return
    _handler_started = True
    # The default again first: a second SIGTERM (an impatient supervisor) ends the
    # process at once, as it would have without the SDK.
    signal.signal(signum, signal.SIG_DFL)
    if _second:  # it came while the watcher flushed for a parked main thread
        os.kill(os.getpid(), signum)
        return
    if _exit_flush_running:
        # It interrupted the process's exit flush (a spawn Pool worker leaving through
        # sys.exit, terminated meanwhile), which may hold the locks another flush
        # would need: that one goes on, bounded as ever, then the process ends by
        # SIGTERM (exit_flush).
        _terminate_after_exit_flush = True
        return
    _run_flush(terminate=True)


@contextlib.contextmanager
def exit_flush() -> Iterator[None]:
    """Around the exit flush (``atexit``, multiprocessing's finalizers): a SIGTERM that
    interrupts it in the main thread lets it finish, then ends the process."""
    global _exit_flush_running
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _exit_flush_running = True
    try:
        yield
    finally:
        _exit_flush_running = False
        if _terminate_after_exit_flush and _SIGTERM is not None:
            os.kill(os.getpid(), _SIGTERM)  # the default disposition by now


def _run_flush(*, terminate: bool) -> None:
    spawn = _threads.green_spawn()
    if spawn is not None:
        # gevent: this handler runs in whichever greenlet the signal interrupted, often
        # the hub, where nothing may block (BlockingSwitchOutError), or one that holds
        # what the flush needs. The flush runs in a greenlet of its own.
        spawn(_flush_then_end, terminate)
    else:
        _flush_then_end(terminate)


def _flush_then_end(terminate: bool) -> None:
    _flush_or_wait()
    if terminate:
        os.kill(os.getpid(), signal.SIGTERM)


def _flush_or_wait() -> None:
    """From the handler: start the flush unless it has started, then wait for it, at
    most the deadline.

    The handler interrupts the main thread wherever it was: perhaps holding an SDK lock
    the flush needs, or one of ``threading``'s own. So the flush runs in a bare
    ``_thread`` thread (``threading.Thread.start`` takes those locks), and a flush stuck
    behind a lock the main thread holds is given up after the deadline. (The watcher
    starts it the same way, and waits for it or for a second SIGTERM.)
    """
    if not _start_flush():
        return
    waited = _deadline() + 1.0
    if _gave_up:  # the watcher waited out the deadline already: its line first
        _give_up(waited)
        return
    if _done.acquire(timeout=waited):
        _done.release()  # open for whoever else waits
    else:
        _give_up(waited)


def _start_flush() -> bool:
    """Start the flush in a bare thread unless it has started (whoever takes _claim);
    False when no thread can be started (the interpreter is finalizing): then there is
    nothing to wait for, and the process ends as it would have without the SDK."""
    if _claim.acquire(blocking=False):
        try:
            _thread.start_new_thread(_flush_then_open, ())
        except RuntimeError:
            return False
    return True


def _give_up(waited: float) -> None:
    """The flush outlived its deadline: the flush itself gives up at the deadline and
    logs what it left, so it is stuck (behind a lock the interrupted main thread holds,
    say). Say so once; the process then ends without it.

    The handler and the watcher may both wait for the flush (the main thread was not
    parked when the SIGTERM came), to the same deadline: whichever gives up second
    waits until the first has said so, as its caller then ends the process. Bounded:
    in the main thread's handler, this may have interrupted this very call there (a
    host handler that calls ours, run again).
    """
    global _gave_up
    saying = _saying.acquire(timeout=_LOG_WAIT + 0.5)
    try:
        if _gave_up:
            return
        _gave_up = True
        _say(
            f"A-Track SIGTERM flush did not end within {waited:.1f} s; the process ends"
            " without it (calls not delivered are lost, unless an outbox keeps them)"
        )
    finally:
        if saying:
            _saying.release()


def _say(message: str) -> None:
    """logging takes locks the interrupted main thread may hold: log from a thread of
    its own, waited for briefly, and write to stderr if that does not end."""
    logged = _thread.allocate_lock()
    logged.acquire()

    def log() -> None:
        try:
            logger.error(message)
        finally:
            logged.release()

    try:
        _thread.start_new_thread(log, ())
        if logged.acquire(timeout=_LOG_WAIT):
            return
    except RuntimeError:  # no new threads (interpreter finalizing)
        pass
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


def _flush_then_open() -> None:
    try:
        if _flush is not None:
            _flush("SIGTERM")
    finally:
        _done.release()
        pipe = _pipe
        if pipe is not None:  # wakes the watcher if it waits for the flush
            with contextlib.suppress(OSError):
                os.write(pipe[1], b"\0")


# -- fork -------------------------------------------------------------------------------


def _before_fork() -> None:
    me = threading.get_ident()
    _fork_blocked.discard(me)
    # A child's SIGTERM before it dropped the handler (and the pipe) would run the
    # handler there, or wake the parent's watcher: it waits, blocked, until then.
    if _SIGTERM is None or signal.getsignal(_SIGTERM) is not _on_sigterm:
        return
    with contextlib.suppress(OSError, ValueError):
        if _SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
            signal.pthread_sigmask(signal.SIG_BLOCK, {_SIGTERM})
            _fork_blocked.add(me)


def _after_fork_in_parent() -> None:
    me = threading.get_ident()
    if me in _fork_blocked and _SIGTERM is not None:
        _fork_blocked.discard(me)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {_SIGTERM})


def _after_fork_in_child() -> None:
    global _claim, _done, _saying, _pipe, _handler_started, _rearm_wanted, _second, _gave_up
    global _exit_flush_running, _terminate_after_exit_flush
    global _watching, _watch_lock
    _watching = False
    _watch_lock = threading.Lock()
    blocked = threading.get_ident() in _fork_blocked  # the forking thread, this one
    _fork_blocked.clear()
    _claim = _thread.allocate_lock()
    _done = _thread.allocate_lock()
    _done.acquire()
    _saying = _thread.allocate_lock()
    _handler_started = False
    _second = False
    _gave_up = False
    _exit_flush_running = False
    _terminate_after_exit_flush = False
    if _pipe is not None:
        r, w = _pipe
        _pipe = None
        with contextlib.suppress(ValueError, OSError):
            previous = signal.set_wakeup_fd(-1)
            if previous != w:
                signal.set_wakeup_fd(previous)  # someone else's since: left alone
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)
    if _SIGTERM is not None:
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(_SIGTERM) is _on_sigterm:
                signal.signal(_SIGTERM, signal.SIG_DFL)
                _rearm_wanted = True
        if blocked:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {_SIGTERM})


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
