"""The SDK's background threads leave the host's signals to the host's threads.

The kernel delivers a process-directed signal (SIGTERM from a supervisor, SIGINT from
Ctrl-C) to any thread that does not block it. Python runs signal handlers only in the
main thread, and since Python 3.13 a main thread parked in an untimed wait
(``Event.wait()``, ``Thread.join()``) is not woken when the signal landed on another
thread: the handler, the host's or the SDK's SIGTERM flush, would never run and the
process would not end. So every thread the SDK starts blocks these signals first.
Under gevent or eventlet a "thread" may be a greenlet in the main OS thread, where
blocking would block the whole process: nothing is blocked there.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

_BLOCKED = frozenset(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None)) if s
)


def _green() -> bool:
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return bool(eventlet is not None and eventlet.is_monkey_patched("thread"))


def quiet(target: Callable[[], None]) -> Callable[[], None]:
    """``target``, run with SIGTERM and SIGINT blocked in its (real OS) thread."""

    def run() -> None:
        if (
            _BLOCKED
            and hasattr(signal, "pthread_sigmask")
            and not _green()
            and threading.get_native_id() != threading.main_thread().native_id
        ):
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        target()

    return run
