"""Failure containment: the SDK's own failures never reach the host's request.

Every place where the SDK's per-request work could fail (storage, delivery, a broken
configuration, a framework object that is not what it should be) runs inside one
:class:`Contain` block instead of a hand-written ``try``/``except``::

    with contain("A-Track track(%r) failed", event, passes=CALLER_ERRORS):
        sdk.send_event(...)

An exception inside is logged on the ``atrack`` logger with its traceback and the code
after the block runs; ``BaseException`` (``KeyboardInterrupt``, task cancellation) and
the ``passes`` types go through unchanged. :data:`CALLER_ERRORS` are what call-site
validation raises for bad input (a view's ``tracker.track(None)``): those are the
caller's bug and must reach it, like any validation error.

The blocks whose message takes no argument share one module-level instance: entering
and leaving it allocates nothing, which matters on the request path.
"""

from __future__ import annotations

import logging
from types import TracebackType

__all__ = ["CALLER_ERRORS", "Contain", "contain"]

logger = logging.getLogger("atrack")

CALLER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)
"""Call-site validation errors: they propagate to the caller."""


class Contain:
    """A reusable, stateless ``with`` block that logs and swallows ``Exception``."""

    __slots__ = ("args", "level", "logger", "message", "passes")

    def __init__(
        self,
        message: str,
        *args: object,
        level: int = logging.ERROR,
        passes: tuple[type[Exception], ...] = (),
        log: logging.Logger = logger,
    ) -> None:
        self.logger = log
        self.message = message
        self.args = args
        self.level = level
        self.passes = passes

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if typ is None or not issubclass(typ, Exception) or issubclass(typ, self.passes):
            return False
        self.logger.log(self.level, self.message, *self.args, exc_info=(typ, exc, tb))  # type: ignore[arg-type]
        return True

    def __repr__(self) -> str:
        return f"<Contain {self.message!r}>"


contain = Contain
"""``with contain("message %s", arg): ...``: a :class:`Contain` for one use."""
