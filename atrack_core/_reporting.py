"""Delivery counters (``stats()``) and how failures are reported: log lines, ``on_error``."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _fork, _threads
from ._call import Call
from ._errors import ATrackError, DeliveryError, KeyRejectedError, QueueFullError
from ._options import mask_key

if TYPE_CHECKING:
    from ._options import Options

logger = logging.getLogger("atrack")

DROP_LOG_INTERVAL = 10.0


class Stats:
    """Thread-safe delivery counters; :meth:`snapshot` is what ``ATrackSdk.stats()`` returns."""

    __slots__ = (
        "__weakref__",
        "_lock",
        "_pid",
        "dropped",
        "enqueued",
        "failed",
        "filtered",
        "in_flight",
        "queued_fn",
        "retried",
        "sent",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.enqueued = 0
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0
        self.in_flight = 0
        self.filtered = 0
        # Set by the background scheduler, which shares ``_lock`` and keeps its queue
        # under it: the snapshot then reads the queue length in the same critical section.
        self.queued_fn: Callable[[], int] | None = None
        _fork.register(self)

    def after_fork_in_child(self) -> None:
        """Fresh lock and zero counters: the child starts with none of the parent's calls.

        Idempotent per process, so every holder of this object may call it."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.enqueued = self.sent = self.failed = self.retried = 0
        self.dropped = self.in_flight = self.filtered = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self, queued: int) -> dict[str, int]:
        with self._lock:
            if self.queued_fn is not None:
                queued = self.queued_fn()
            return {
                "enqueued": self.enqueued,
                "sent": self.sent,
                "failed": self.failed,
                "retried": self.retried,
                "dropped": self.dropped,
                "queued": queued,
                "in_flight": self.in_flight,
                "filtered": self.filtered,
            }


class Reporter:
    """Logs and forwards failures: the 401/403 line once per SDK, ``on_error`` always."""

    def __init__(self, options: Options, stats: Stats, base_url: str) -> None:
        self._options = options
        # Named in every line, so a wrong or unreachable ATRACK_ENDPOINT shows in the log.
        self._base_url = base_url
        self._stats = stats
        self._key_logged = False
        self._last_drop_log = -DROP_LOG_INTERVAL
        self._last_closed_log = -DROP_LOG_INTERVAL
        self._last_fail_log = -DROP_LOG_INTERVAL
        self._fails_not_logged = 0
        self._drops_not_logged = 0
        self._lock = threading.Lock()
        _fork.register(self)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def failed(self, call: Call, error: DeliveryError, *, count: bool = True) -> None:
        """Report a call given up on. ``count=False`` when the caller already counted
        it in ``stats().failed`` (the scheduler does, under its own lock)."""
        key = self._options.public_key
        if error.body and key in error.body:
            # An API, a proxy or something posing as one may echo the key in its error
            # text; the body reaches logs through on_error, the caller and the CLI.
            error.body = error.body.replace(key, mask_key(key))
        if count:
            self._stats.add("failed")
        if isinstance(error, KeyRejectedError):
            with self._lock:
                first = not self._key_logged
                self._key_logged = True
            if first:
                logger.error(
                    "A-Track at %s rejected the public key %s (HTTP %s); nothing will be "
                    "accepted until the key is fixed",
                    self._base_url,
                    mask_key(self._options.public_key),
                    error.status,
                )
        else:
            # During an outage every call fails: one line per 10 s (with a count of the
            # others) keeps the log readable; each one is still at DEBUG and on_error.
            now = time.monotonic()
            with self._lock:
                log = now - self._last_fail_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_fail_log = now
                    others, self._fails_not_logged = self._fails_not_logged, 0
                else:
                    self._fails_not_logged += 1
            if log:
                logger.warning(
                    "A-Track call %s%s for uuid %r dropped: %s%s",
                    self._base_url,
                    call.path,
                    call.uuid,
                    error,
                    f" ({others} other calls dropped since the last such message)"
                    if others
                    else "",
                )
            else:
                logger.debug(
                    "A-Track call %s%s for uuid %r dropped: %s",
                    self._base_url,
                    call.path,
                    call.uuid,
                    error,
                )
        self.hook(call, error)

    def dropped(self, call: Call, *, closed: bool = False, limit: str = "") -> None:
        """Report a call refused at submit: the queue was full (``limit`` says which
        bound), or the SDK shut down. Counted in ``stats().dropped``; logged at most
        once per 10 s."""
        self._stats.add("dropped")
        now = time.monotonic()
        others = 0
        with self._lock:
            if closed:
                log = now - self._last_closed_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_closed_log = now
            else:
                log = now - self._last_drop_log >= DROP_LOG_INTERVAL
                if log:
                    self._last_drop_log = now
                    others, self._drops_not_logged = self._drops_not_logged, 0
                else:
                    self._drops_not_logged += 1
        error: ATrackError
        if closed:
            if log:
                logger.warning(
                    "A-Track SDK is shut down; dropping calls made once shutdown() began"
                )
            error = ATrackError("the SDK was shut down; call dropped")
        else:
            limit = limit or f"{self._options.max_queue_size} calls waiting"
            if log:
                logger.warning(
                    "A-Track queue is full (%s); dropping calls (see stats().dropped)%s",
                    limit,
                    f" ({others} other calls dropped since the last such message)"
                    if others
                    else "",
                )
            error = QueueFullError(f"queue full ({limit}); dropped")
        self.hook(call, error)

    def closing(self) -> None:
        """At shutdown: the failed and dropped calls the 10 s limit kept out of the log
        since the last such line (each at DEBUG and ``on_error`` only), so that the log
        accounts for every call lost."""
        with self._lock:
            fails, self._fails_not_logged = self._fails_not_logged, 0
            drops, self._drops_not_logged = self._drops_not_logged, 0
        if fails:
            logger.warning(
                "A-Track calls to %s dropped after failing: %d other calls since the last "
                "such message (see stats().failed)",
                self._base_url,
                fails,
            )
        if drops:
            logger.warning(
                "A-Track queue was full: %d other calls dropped since the last such message "
                "(see stats().dropped)",
                drops,
            )

    def abandoned(self, calls: list[Call]) -> None:
        """Report the calls a shutdown that ran out of time leaves undelivered (the
        shutdown's own warning says how many): counted in ``stats().dropped``, each
        passed to ``on_error``."""
        self._stats.add("dropped", len(calls))
        for call in calls:
            self.hook(
                call, ATrackError("the SDK shut down (timeout) before this call was delivered")
            )

    def hook(self, call: Call, error: BaseException) -> None:
        on_error = self._options.on_error
        if on_error is None:
            return
        try:
            on_error(call, error)
        except Exception:
            logger.exception("A-Track on_error hook raised")
        except (SystemExit, KeyboardInterrupt):
            # In a caller's thread (sync mode, a drop) it is the caller's. In an SDK
            # thread it could only end that thread (signals reach the main thread; no
            # sys.exit() elsewhere ends a process), the libcurl transport's only sender
            # included: nothing would be delivered any more. Under gevent an SDK
            # greenlet passes it on to the main greenlet (_threads.quiet).
            if not _threads.in_sdk_thread() or _threads.green():
                raise
            logger.exception(
                "A-Track on_error hook raised in a delivery thread, where that cannot end "
                "the process; ignored"
            )
