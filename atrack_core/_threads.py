"""The SDK's background threads leave the host's signals to the host's threads.

The kernel delivers a process-directed signal (SIGTERM from a supervisor, SIGINT from
Ctrl-C) to any thread that does not block it. Python runs signal handlers only in the
main thread, and since Python 3.13 a main thread parked in an untimed wait
(``Event.wait()``, ``Thread.join()``) is not woken when the signal landed on another
thread: the handler, the host's or the SDK's SIGTERM flush, would never run and the
process would not end. So every thread the SDK starts is born with these signals
blocked: they are blocked in the starting thread while it creates the new one (a thread
inherits its creator's mask); blocking them only inside the new thread would leave the
moment before its first line open.
Under gevent or eventlet a "thread" may be a greenlet in the main OS thread, where
blocking would block the whole process: nothing is blocked there. There, a signal
handler may run in an SDK greenlet (whichever runs Python code when the signal is
checked), and a host's handler that ends with ``sys.exit()`` raises ``SystemExit`` in
it, which ``threading`` would swallow: the process went on as if the signal never came.
Under gevent it goes to the main greenlet, as gevent does for its own greenlets.
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


def green() -> bool:
    """Whether gevent or eventlet has patched ``threading`` (threads are greenlets)."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    eventlet = sys.modules.get("eventlet.patcher")
    return bool(eventlet is not None and eventlet.is_monkey_patched("thread"))


def green_spawn() -> Callable[..., object] | None:
    """``gevent.spawn`` when gevent has patched ``threading``, else ``None``."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    spawn: Callable[..., object] | None = getattr(sys.modules.get("gevent"), "spawn", None)
    return spawn


# Marks the SDK's own threads (those run through quiet()).
_local = threading.local()


def in_sdk_thread() -> bool:
    """Whether the current thread is one the SDK started (a sender, the writer ...)."""
    return getattr(_local, "sdk", False)


def quiet(target: Callable[[], None]) -> Callable[[], None]:
    """``target``, run with SIGTERM and SIGINT blocked in its (real OS) thread."""

    def run() -> None:
        _local.sdk = True
        if (
            _BLOCKED
            and hasattr(signal, "pthread_sigmask")
            and not green()
            and threading.get_native_id() != threading.main_thread().native_id
        ):
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            target()
        except (SystemExit, KeyboardInterrupt) as exc:
            if not _to_main_greenlet(exc):
                raise

    return run


def _to_main_greenlet(exc: BaseException) -> bool:
    """Raise ``exc`` (a host's signal handler's, run in this SDK greenlet) in the main
    greenlet, through gevent's hub; False when this is no gevent greenlet."""
    if green_spawn() is None:
        return False
    gevent = sys.modules["gevent"]
    hub = gevent.get_hub()
    if gevent.getcurrent() in (hub, hub.parent):
        return False
    hub.handle_system_error(type(exc), exc, exc.__traceback__)
    return True


def start(thread: threading.Thread) -> None:
    """``thread.start()`` with SIGTERM and SIGINT blocked in this thread meanwhile, so
    the new thread is born with them blocked.

    A signal that arrives in that moment stays pending and is delivered when they are
    unblocked here. Only what this function blocked is unblocked, in ``finally``, and
    the block itself is inside the ``try``: a Python handler (the host's, say one that
    calls ``sys.exit``) may run in the main thread between any two steps and raise, and
    must never leave the main thread deaf to SIGTERM.
    """
    if not _BLOCKED or not hasattr(signal, "pthread_sigmask") or green():
        thread.start()
        return
    try:
        already = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    except (OSError, ValueError):
        thread.start()
        return
    blocking = _BLOCKED - set(already)
    try:
        if blocking:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocking)
        thread.start()
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocking)
