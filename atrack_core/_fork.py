"""After ``os.fork()``: objects whose locks, queues and threads a child must rebuild.

A lock held by another thread at fork time stays locked forever in the child, and the
child has none of the parent's threads; every object that owns such state registers
here and gets ``after_fork_in_child()`` called in the child.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

logger = logging.getLogger("atrack")

_registered: weakref.WeakSet[Any] = weakref.WeakSet()


def register(obj: Any) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked while ``obj`` lives."""
    _registered.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_registered):
        try:
            obj.after_fork_in_child()
        except Exception:
            logger.exception("A-Track could not reset %s after fork", type(obj).__name__)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
