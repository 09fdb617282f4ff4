"""Process exit: the live SDKs, and the one flush that runs when the process ends.

A process can end in three ways that matter here, and each gets the same flush:

- **Interpreter exit**: one ``atexit`` hook for every live SDK of the process.
- **SIGTERM with nobody listening**: some servers never run ``atexit`` on SIGTERM
  (waitress, granian), and the default disposition kills the process at once: the
  SDK's SIGTERM handler flushes first (``_sigterm.py``).
- **multiprocessing children** leave through ``os._exit`` (no ``atexit``) after
  running multiprocessing's own finalizers: a finalizer is registered in each child.

The bound is per process, not per SDK: every live SDK flushes from the same start and
the whole flush ends within the largest ``shutdown_timeout`` (an SDK stops waiting at
its own). Senders deliver concurrently; only the waiting is one SDK after another.
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
    _sigterm.maybe_install(flush_all, deadline)


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
