"""The request a background task was published from, as a message header.

A task published while a request is handled carries, under the ``atrack`` header, the
request's user and context, so that the task's events are the user's and carry the
page's context::

    {"v": 1, "uuid": "0b9e…", "context": {"url": "/checkout", "ipAddress": "…", …}}

The context is the wire form the request's events carry (section 5 of the spec). JSON
only (any Celery serializer carries it). :func:`decode` accepts what :func:`encode`
makes and nothing else: a header that does not fit (another version, a foreign or
damaged message) gives ``None``, and the task runs without a tracker.
"""

from __future__ import annotations

from typing import Any

from atrack_core._validate import check_name

from ._lifecycle import RequestTracker

__all__ = ["CONTEXT_KEYS", "HEADER", "VERSION", "decode", "encode"]

HEADER = "atrack"
VERSION = 1
CONTEXT_KEYS = frozenset({"url", "referer", "ipAddress", "userAgent", "locale", "timezone"})
# A context value is a header, a URL or an address; the request side cuts them well
# below this.
_MAX_VALUE = 8192


def encode(tracker: RequestTracker) -> dict[str, Any] | None:
    """The header for a task published during ``tracker``'s request; ``None`` for a
    no-op tracker (``respect_dnt`` matched: the user's choice follows the task)."""
    if not tracker.enabled:
        return None
    return {"v": VERSION, "uuid": tracker.uuid, "context": tracker.context}


def decode(value: object) -> tuple[str, dict[str, str]] | None:
    """``(uuid, context)`` from a header :func:`encode` made, else ``None``."""
    if not isinstance(value, dict) or value.get("v") != VERSION:
        return None
    context = value.get("context")
    if not isinstance(context, dict):
        return None
    try:
        uuid = check_name(value.get("uuid"), "uuid")
    except (TypeError, ValueError):
        return None
    clean: dict[str, str] = {}
    for key, item in context.items():
        if key not in CONTEXT_KEYS or not isinstance(item, str) or len(item) > _MAX_VALUE:
            return None
        clean[key] = item
    return uuid, clean
