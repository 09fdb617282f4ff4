"""Process exit: the live SDKs, and the one flush that runs when the process ends.

A process can end in three ways that matter here, and each gets the same flush:

- **Interpreter exit**: one ``atexit`` hook for every live SDK of the process.
- **SIGTERM with nobody listening**: some servers never run ``atexit`` on SIGTERM
  (waitress, granian), and the default disposition kills the process at once: the
  SDK's SIGTERM handler flushes first (``_sigterm.py``; one that lands during the exit
  flush lets it finish).
- **multiprocessing children** leave through ``os._exit`` (no ``atexit``) after
  running multiprocessing's own finalizers: a finalizer is registered in each child.

The bound is per process, not per SDK: every live SDK flushes from the same start and
the whole flush ends within the largest ``shutdown_timeout`` (an SDK stops waiting at
its own). Senders deliver concurrently; only the waiting is one SDK after another.

A server that stops the app before the process ends (the ASGI lifespan's shutdown,
aiohttp's cleanup) has the integrations flush then. When that flush runs out of time,
the exit flush that follows keeps its deadline (:func:`server_stopping`) instead of
waiting a whole ``shutdown_timeout`` again for the same calls: a process whose API
never answers ends within ``shutdown_timeout`` of its server's stop, not twice it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from . import _sigterm

if TYPE_CHECKING:
    from ._sdk import ATrackSdk

logger = logging.getLogger("atrack")

# multiprocessing runs finalizers with a priority >= 0 before it terminates and joins
# the child's own children; higher first.
MP_EXIT_PRIORITY = 10

# No lock guards _live: the SIGTERM flush runs in a thread of its own while the main
# thread it interrupted may be anywhere, in register() or in the exit flush's own copy
# of the set included; a lock held there would stall the flush until its deadline (a
# terminated spawn Pool worker, interrupted in its atexit flush, lost its calls so).
# Adding, discarding and copying a set are single steps under the GIL. (A WeakSet's
# copy is not: it iterates, and fails when another thread changes the set meanwhile.)
_live: set[weakref.ref[ATrackSdk]] = set()
_hook_lock = threading.Lock()  # the one-time multiprocessing hook


_mp_hooked = False

# When a server began stopping the app (server_stopping()); None before, and after a
# flush at the stop that delivered everything (server_stop_flushed()).
_server_stop: float | None = None


def _after_fork_in_child() -> None:
    global _hook_lock, _server_stop
    # A lock another thread held at fork time stays held forever in the child.
    _hook_lock = threading.Lock()
    # A stop the parent's server began is not the child's: its exit flush gets a whole
    # shutdown_timeout for its own calls.
    _server_stop = None


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Token:
    """What ``multiprocessing.util.register_after_fork`` keys its callback on (it keeps
    a weak reference): lives as long as this module."""


_token = _Token()


def register(sdk: ATrackSdk) -> None:
    """Flush ``sdk`` when the process ends (until :func:`unregister`)."""
    _live.add(weakref.ref(sdk, _live.discard))  # gone with the SDK
    if not _mp_hooked:
        _hook_multiprocessing()
    _sigterm.maybe_install(flush_all, deadline)


def unregister(sdk: ATrackSdk) -> None:
    _live.discard(weakref.ref(sdk))  # equal to the one added: same referent


def flush_all(reason: str = "exit") -> None:
    """Shut down every live SDK: all from one start, each within its own
    ``shutdown_timeout``, so the whole takes at most the largest of them. After a
    server's stop whose flush ran out of time, the start is that stop's."""
    sdks = _live_sdks()
    if not sdks:
        return
    start = time.monotonic()
    stopped = _server_stop
    if stopped is not None:
        start = min(start, stopped)
    for sdk in sdks:
        budget = sdk.options.shutdown_timeout
        remaining = max(0.0, start + budget - time.monotonic())
        try:
            sdk._close(remaining, budget, join=True, since=start)
        except Exception:
            logger.exception("A-Track %s flush failed", reason)


def server_stopping() -> float:
    """A server is stopping the app (ASGI ``lifespan.shutdown``, aiohttp's cleanup):
    the instant the integrations' flush deadline counts from, kept for the exit flush
    until :func:`server_stop_flushed`. Several flushes of one stop (nested middlewares,
    several apps) share the first one's instant; a stop later than the largest
    ``shutdown_timeout`` after it (a test client's lifespan entered again) starts anew."""
    global _server_stop
    now = time.monotonic()
    stopped = _server_stop
    if stopped is None or now - stopped >= deadline():
        _server_stop = stopped = now
    return stopped


def server_stop_flushed() -> None:
    """The flush at the server's stop delivered everything in time: whatever is made
    after it is new, and the exit flush gets a whole ``shutdown_timeout`` for it."""
    global _server_stop
    _server_stop = None


def warn_stop_flush_timed_out(sdk: ATrackSdk, stop: str, timeout: float) -> None:
    """The warning of a server stop's flush that ran out (``stop``: "shutdown" for the
    ASGI lifespan, "cleanup" for aiohttp, "worker shutdown" for Celery), saying where
    the calls not delivered go: with an outbox they are not dropped."""
    if sdk.options.outbox is not None and not sdk.options.disabled:
        fate = "the calls the outbox wrote stay in it for the next process"
    else:
        fate = "undelivered calls are dropped"
    logger.warning("A-Track flush at %s timed out after %ss; %s", stop, timeout, fate)


def time_left(end: float) -> float:
    """Seconds until the ``time.monotonic()`` instant ``end``, never negative."""
    return max(0.0, end - time.monotonic())


def deadline() -> float:
    """The longest the flush of the live SDKs may take (seconds)."""
    return max((sdk.options.shutdown_timeout for sdk in _live_sdks()), default=0.0)


def _live_sdks() -> list[ATrackSdk]:
    return [sdk for ref in _live.copy() if (sdk := ref()) is not None]


# -- interpreter exit -------------------------------------------------------------------


@atexit.register
def _at_exit() -> None:
    _exit_flush("exit")


def _exit_flush(reason: str) -> None:
    with _sigterm.exit_flush():
        flush_all(reason)


# -- multiprocessing ----------------------------------------------------------------------


def _hook_multiprocessing() -> None:
    """Register the child's flush in every multiprocessing child to come (fork and
    forkserver children inherit the SDKs), and in this process if it is one (spawn)."""
    global _mp_hooked
    with _hook_lock:
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
        None, _exit_flush, args=("multiprocessing child exit",), exitpriority=MP_EXIT_PRIORITY
    )
