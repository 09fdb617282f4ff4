"""Init dedupe: one ``/init`` per user per ``init_ttl``, across every worker.

The storage's ``add`` is the one arbiter across workers and hosts (SPEC section 6 step
4): N workers sharing a ``RedisStorage`` send one ``/init`` per user session. A
process-local memory of recent inits (uuid -> monotonic deadline) saves the storage
round trip on every request of a returning user.

A failing storage is a miss, never an error: better a duplicate ``/init`` than a lost
user. Its warning is rate-limited; each failure is a DEBUG line naming the key.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from atrack_core import ATrackSdk

from ._contain import Contain

if TYPE_CHECKING:
    from ._tracker import RequestTracker

__all__ = ["INIT_KEY_PREFIX", "InitDedupe", "OrderedOffload"]

logger = logging.getLogger("atrack")

INIT_KEY_PREFIX = "init:"

# Bounded: the local memory is cleared when it grows past this.
_LOCAL_SEEN_MAX = 50_000
# When another worker won the ``add``, its key expires at an unknown time within
# ``init_ttl``: ask the storage again after at most this long.
_LOCAL_SEEN_OTHER = 60.0
_STORAGE_WARN_EVERY = 60.0

# Work waiting for the ordered worker; past this (the storage hangs), more is dropped.
_OFFLOAD_MAX_PENDING = 10_000

_INIT_FAILED = Contain("A-Track /init for this request failed")
_OFFLOADED_FAILED = Contain("A-Track request work in the background failed")


class InitDedupe:
    """Decides whether a user's ``/init`` is due, and sends it. Shared by every request
    and thread of one installed integration."""

    __slots__ = ("_lock", "_sdk", "_seen", "_warned_at", "deadline", "ttl")

    def __init__(self, sdk: ATrackSdk, ttl: float) -> None:
        self._sdk = sdk
        self.ttl = ttl
        self._seen: dict[str, float] = {}
        #: ``deadline(uuid)``: the monotonic time until which this process knows the
        #: user's ``/init`` went out, or ``None`` (what :meth:`recent` compares).
        self.deadline = self._seen.get
        self._warned_at = -_STORAGE_WARN_EVERY
        self._lock = threading.Lock()

    def recent(self, uuid: str) -> bool:
        """Whether this process knows ``uuid``'s ``/init`` went out within ``init_ttl``
        (no I/O: the request path's fast answer for a returning user)."""
        seen = self._seen.get(uuid)
        return seen is not None and seen > time.monotonic()

    def send(self, tracker: RequestTracker, attributes: dict[str, Any] | None) -> None:
        """Send ``/init`` for the tracker's user unless one went out within ``init_ttl``
        (from this process or, through the storage, any other); with ``attributes``
        they go out either way. May block on the storage. Never raises."""
        uuid = tracker._uuid
        assert uuid is not None
        now = time.monotonic()
        seen = self._seen.get(uuid)
        if seen is not None and seen > now and not attributes:
            return
        try:
            added = self._sdk.storage.add(INIT_KEY_PREFIX + uuid, "1", self.ttl)
        except Exception as exc:  # noqa: BLE001 - logged (rate-limited) by _warn_storage
            # Each one at DEBUG with the key (it names the user): a duplicate /init
            # can be traced to the failure that let it through.
            logger.debug(
                "A-Track storage add %s%s failed (%r): treated as a miss, /init sent",
                INIT_KEY_PREFIX,
                uuid,
                exc,
            )
            self._warn_storage()
            added = True
        if len(self._seen) >= _LOCAL_SEEN_MAX:
            self._seen.clear()
        self._seen[uuid] = now + (self.ttl if added else min(self.ttl, _LOCAL_SEEN_OTHER))
        with _INIT_FAILED:
            if added:
                self._sdk._init_checked(
                    uuid,
                    tracker.is_new_user,
                    "merge",
                    tracker._context_dict(),
                    attributes or {},
                    {},
                )
            elif attributes:
                # The user was initialised already: the attributes still go out.
                self._sdk._attributes_checked(uuid, attributes, False, {})

    def _warn_storage(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < _STORAGE_WARN_EVERY:
                return
            self._warned_at = now
        logger.warning(
            "A-Track storage failed on add (init dedupe); treating it as a miss "
            "(logged at most once a minute)",
            exc_info=True,
        )


class OrderedOffload:
    """A few worker threads that run a request's storage-bound work off the event loop,
    each request's work in the order it was submitted.

    Under ASGI a view calls ``tracker.track()`` on the event loop; when that call first
    needs the init dedupe and the storage does I/O (Redis), the dedupe, the ``/init``
    and every later call of that request go here instead, so a hung storage stalls no
    event loop and the user's calls keep their order (the ``/init`` first): a request's
    next item starts when its previous one is done. Different requests run side by
    side (8 threads), so new users do not queue behind each other. A returning user
    never gets here (the process-local memory answers). Started on first use, and
    again in a forked child. Bounded: past 10,000 waiting items (a storage that hangs
    for long) further work is dropped with a warning.
    """

    __slots__ = ("_bound", "_lock", "_pending")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (pid, pool), one attribute: read as one, a forked child cannot pair its own
        # pid with the parent's pool (whose threads did not survive the fork).
        self._bound: tuple[int, ThreadPoolExecutor] | None = None
        self._pending: set[Future[None]] = set()

    def submit(self, work: Callable[[], None], after: Future[None] | None) -> Future[None] | None:
        """Run ``work`` once ``after`` (the same request's previous item) is done; the
        future is done once ``work`` has run (``None``: dropped)."""
        bound = self._bound
        pool = self._start() if bound is None or bound[0] != os.getpid() else bound[1]
        if len(self._pending) >= _OFFLOAD_MAX_PENDING:
            logger.warning("A-Track background work is backed up (storage hanging?); dropped")
            return None
        future: Future[None] = Future()
        pending = self._pending
        with self._lock:
            pending.add(future)

        def run() -> None:
            try:
                with _OFFLOADED_FAILED:
                    work()
            finally:
                with self._lock:
                    pending.discard(future)
                future.set_result(None)

        if after is None or after.done():
            pool.submit(run)
        else:
            after.add_done_callback(lambda _: pool.submit(run))
        return future

    def drain(self, timeout: float | None) -> bool:
        """Wait until the work submitted so far has run; ``False`` on timeout."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return True
        _, not_done = wait(pending, timeout)
        return not not_done

    def _start(self) -> ThreadPoolExecutor:
        with self._lock:
            bound = self._bound
            pid = os.getpid()
            if bound is None or bound[0] != pid:
                # In a forked child the parent's threads and items are not ours.
                self._pending = set()
                bound = self._bound = (
                    pid,
                    ThreadPoolExecutor(8, thread_name_prefix="atrack-offload"),
                )
            return bound[1]
