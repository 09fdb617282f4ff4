"""Process exit: the live SDKs, and the one flush that runs when the process ends.

A process can end in three ways that matter here, and each gets the same flush:

- **Interpreter exit**: one ``atexit`` hook for every live SDK of the process.
- **SIGTERM with nobody listening**: some servers never run ``atexit`` on SIGTERM
  (waitress; granian's WSGI and lifespan-less ASGI workers before 2.x): the default
  SIGTERM disposition kills the process at once. When the process still has that default
  disposition as the first SDK is built in the main thread, a handler is installed
  that flushes, then restores the default and raises SIGTERM again, so the process
  ends exactly as it would have (status, core, parent's view). A handler the host set
  is never replaced; a host that sets one later replaces this one, and owns shutdown.
  ``ATRACK_SIGTERM_FLUSH=0`` turns it off.
- **multiprocessing children** leave through ``os._exit`` (no ``atexit``) after
  running multiprocessing's own finalizers: a finalizer is registered in each child.

The bound is per process, not per SDK: every live SDK flushes from the same start and
the whole flush ends within the largest ``shutdown_timeout`` (an SDK stops waiting at
its own). Senders deliver concurrently; only the waiting is one SDK after another.
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._sdk import ATrackSdk

logger = logging.getLogger("atrack")

SIGTERM_ENV = "ATRACK_SIGTERM_FLUSH"
# multiprocessing runs finalizers with a priority >= 0 before it terminates and joins
# the child's own children; higher first.
MP_EXIT_PRIORITY = 10
# What the SIGTERM handler waits when the live SDKs cannot be read (never in practice).
_FALLBACK_DEADLINE = 5.0

_live: weakref.WeakSet[ATrackSdk] = weakref.WeakSet()
# Re-entrant: the SIGTERM handler runs on the main thread, which it may have interrupted
# inside one of the functions below (a plain lock would deadlock it there).
_lock = threading.RLock()


def _new_lock_in_child() -> None:
    # A lock another thread held at fork time stays held forever in the child: its exit
    # flush would wait on it for ever.
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_new_lock_in_child)

_sigterm_decided = False
_mp_hooked = False


class _Token:
    """What ``multiprocessing.util.register_after_fork`` keys its callback on (it keeps
    a weak reference): lives as long as this module."""


_token = _Token()


def register(sdk: ATrackSdk) -> None:
    """Flush ``sdk`` when the process ends (until :func:`unregister`)."""
    with _lock:
        _live.add(sdk)
        first_mp = not _mp_hooked
    if first_mp:
        _hook_multiprocessing()
    if not _sigterm_decided:
        _maybe_handle_sigterm()


def unregister(sdk: ATrackSdk) -> None:
    with _lock:
        _live.discard(sdk)


def flush_all(reason: str = "exit") -> None:
    """Shut down every live SDK: all from one start, each within its own
    ``shutdown_timeout``, so the whole takes at most the largest of them."""
    with _lock:
        sdks = list(_live)
    if not sdks:
        return
    start = time.monotonic()
    for sdk in sdks:
        budget = sdk.options.shutdown_timeout
        remaining = max(0.0, start + budget - time.monotonic())
        try:
            sdk._close(remaining, budget, join=True)
        except Exception:
            logger.exception("A-Track %s flush failed", reason)


def deadline() -> float:
    """The longest the flush of the live SDKs may take (seconds). Takes no lock: the
    SIGTERM handler calls it in the main thread, which may hold ``_lock`` right then."""
    for _ in range(3):
        try:
            return max((sdk.options.shutdown_timeout for sdk in list(_live)), default=0.0)
        except RuntimeError:  # the set changed while being copied: another thread
            continue
    return _FALLBACK_DEADLINE


# -- interpreter exit -------------------------------------------------------------------


@atexit.register
def _at_exit() -> None:
    flush_all("exit")


# -- SIGTERM ----------------------------------------------------------------------------


def sigterm_enabled() -> bool:
    return os.environ.get(SIGTERM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _maybe_handle_sigterm() -> None:
    """Decided once, by the first SDK built in the main thread (only the main thread
    may set a handler)."""
    global _sigterm_decided
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if _sigterm_decided:
            return
        _sigterm_decided = True
    if not sigterm_enabled() or not hasattr(signal, "SIGTERM") or sys.platform == "win32":
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the host handles SIGTERM: its shutdown runs atexit or a lifespan
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # an embedded interpreter without signals
        return


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        # A handler the host installed after the SDK calls this one as its previous
        # handler: flush, and leave the rest (exit or not, with which status) to it.
        _run_flush(terminate=False)
        return
    # The default again first: a second SIGTERM (an impatient supervisor) ends the
    # process at once, as it would have without the SDK.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _run_flush(terminate=True)


def _run_flush(*, terminate: bool) -> None:
    spawn = _greenlet_spawn()
    if spawn is not None:
        # gevent: this handler runs in whichever greenlet the signal interrupted, often
        # the hub, where nothing may block (BlockingSwitchOutError), or one that holds
        # what the flush needs. The flush runs in a greenlet of its own.
        spawn(_flush_bounded, terminate)
    else:
        _flush_bounded(terminate)


def _flush_bounded(terminate: bool) -> None:
    # This handler interrupts the main thread wherever it was: perhaps holding an SDK
    # lock the flush needs, or one of ``threading``'s own (inside ``Thread.start`` or
    # the interpreter's thread shutdown). So the flush runs in a bare ``_thread``
    # thread (``threading.Thread.start`` would take those locks, and waits without a
    # timeout for the thread to start), and the wait for it here is bounded: a flush
    # stuck behind a lock this thread holds is given up after the deadline.
    done = _thread.allocate_lock()
    done.acquire()

    def flush_then_release() -> None:
        try:
            flush_all("SIGTERM")
        finally:
            done.release()

    try:
        _thread.start_new_thread(flush_then_release, ())
    except RuntimeError:  # no new threads (interpreter finalizing): end as without us
        pass
    else:
        done.acquire(timeout=deadline() + 1.0)
    if terminate:
        os.kill(os.getpid(), signal.SIGTERM)


def _greenlet_spawn() -> Callable[..., object] | None:
    """``gevent.spawn`` when gevent has patched ``threading``, else ``None``."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    spawn: Callable[..., object] | None = getattr(sys.modules.get("gevent"), "spawn", None)
    return spawn


# -- multiprocessing ----------------------------------------------------------------------


def _hook_multiprocessing() -> None:
    """Register the child's flush in every multiprocessing child to come (fork and
    forkserver children inherit the SDKs), and in this process if it is one (spawn)."""
    global _mp_hooked
    with _lock:
        if _mp_hooked:
            return
        _mp_hooked = True
    try:
        from multiprocessing import parent_process, util
    except ImportError:  # a platform without multiprocessing
        return
    util.register_after_fork(_token, _register_child_flush)
    if parent_process() is not None:
        _register_child_flush(_token)


def _register_child_flush(token: object) -> None:
    from multiprocessing import util

    util.Finalize(
        None, flush_all, args=("multiprocessing child exit",), exitpriority=MP_EXIT_PRIORITY
    )
