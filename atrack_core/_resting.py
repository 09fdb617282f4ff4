"""A shared storage backend that failed is left alone for a moment, and its outage is
logged once.

An operation on a backend that is down or hung costs up to its client's timeout. Every
request asks the storage (the ``/init`` dedupe), so without a pause an outage would
cost every request that timeout, and log one WARNING each. After a failure the backend
is not asked for ``interval`` seconds (each operation is a miss at once); the first
failure of an outage is logged at WARNING with the exception, the others at DEBUG, and
the first success after it at WARNING again. Each miss of an operation given its
``key`` is also a DEBUG line naming the key (failed, or not asked while resting): the
``/init`` dedupe's key names the user, so a duplicate ``/init`` can be traced to the
storage miss that let it through. Used by ``RedisStorage`` and Django's cache storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL = 1.0
"""Seconds during which a backend is not asked again after a failure."""


class Resting:
    """Runs a backend's operations; see the module docstring. ``name`` starts the log
    lines ("Redis", "Django cache 'default'"). Thread-safe enough without a lock: two
    threads failing at once may both log the outage's first line."""

    __slots__ = ("_down_until", "_failing", "interval", "log", "name")

    def __init__(self, name: str, interval: float, log: logging.Logger) -> None:
        self.name = name
        self.interval = float(interval)
        self.log = log
        # Monotonic time before which the backend is not asked (after a failure).
        self._down_until = 0.0
        self._failing = False

    def call(
        self, what: str, operation: Callable[[], Any], key: str | None = None
    ) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when the backend failed or rests.
        ``key``: the operation's key, named in a DEBUG line when it is a miss."""
        if self._down_until and time.monotonic() < self._down_until:
            if key is not None:
                self.log.debug(
                    "%s %s %s: a miss (not asked, resting after a failure)", self.name, what, key
                )
            return False, None
        try:
            result = operation()
        except Exception as exc:
            self._down_until = time.monotonic() + self.interval
            if key is not None:
                self.log.debug("%s %s %s: a miss (failed: %r)", self.name, what, key, exc)
            if self._failing:
                self.log.debug("%s %s failed again: %r", self.name, what, exc)
            else:
                self._failing = True
                self.log.warning(
                    "%s %s failed; treating it as a miss, and every operation for the "
                    "next %.1f s too (logged once per outage)",
                    self.name,
                    what,
                    self.interval,
                    exc_info=True,
                )
            return False, None
        if self._failing:
            self._failing = False
            self._down_until = 0.0
            self.log.warning("%s is reachable again", self.name)
        return True, result
