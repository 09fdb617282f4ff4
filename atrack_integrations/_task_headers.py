"""The request a background task was published from, as a message header.

A task published while a request is handled carries, under the ``atrack`` header, the
request's user and context, so that the task's events are the user's and carry the
page's context::

    {"v": 1, "uuid": "0b9e…", "context": {"url": "/checkout", "ipAddress": "…", …}}

A request whose tracker is a no-op (``respect_dnt`` matched) publishes
``{"v": 1, "off": true}``: the task gets a no-op tracker too, so the user's choice
follows the task and the task's ``track()`` calls neither send nor raise.

The context is the wire form the request's events carry (section 5 of the spec). JSON
only (any Celery serializer carries it). Whoever can publish to the broker can write
this header, so :func:`decode` accepts what :func:`encode` makes and nothing else: each
context value as the request side makes it (its length bound, no control characters nor
lone surrogates, a real IP address, a locale and a time zone as the request side
normalises them). Anything else raises :class:`HeaderError`, whose message says what
was wrong without repeating the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Final

from atrack_core._request import (
    MAX_LOCALE_LENGTH,
    MAX_REFERER_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    preferred_locale,
    valid_timezone,
)
from atrack_core._validate import check_name

from ._lifecycle import RequestTracker

__all__ = ["CONTEXT_KEYS", "HEADER", "OFF", "VERSION", "HeaderError", "decode", "encode"]

HEADER = "atrack"
VERSION = 1
#: What :func:`decode` returns for the header of a no-op tracker's request.
OFF: Final = "off"

# C0 controls, DEL and C1 controls: never in a context value the request side makes.
_CONTROLS = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


class HeaderError(ValueError):
    """An ``atrack`` task header that :func:`encode` did not make."""


def _url(limit: int) -> Callable[[str], bool]:
    # The request side percent-encodes a URL to printable ASCII and cuts it at limit.
    return lambda value: len(value) <= limit and value.isascii() and value.isprintable()


def _text(value: str) -> bool:
    # No lone surrogate either (the request side removes them, as controls).
    return (
        len(value) <= MAX_USER_AGENT_LENGTH
        and _CONTROLS.isdisjoint(value)
        and (value.isascii() or _encodable(value))
    )


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _locale(value: str) -> bool:
    return len(value) <= MAX_LOCALE_LENGTH and preferred_locale(value) == value


def _timezone(value: str) -> bool:
    return len(value) <= 64 and valid_timezone(value) == value


_CHECKS: dict[str, Callable[[str], bool]] = {
    "url": _url(MAX_URL_LENGTH),
    "referer": _url(MAX_REFERER_LENGTH),
    "ipAddress": _ip,
    "userAgent": _text,
    "locale": _locale,
    "timezone": _timezone,
}
CONTEXT_KEYS = frozenset(_CHECKS)


def encode(tracker: RequestTracker) -> dict[str, Any]:
    """The header for a task published during ``tracker``'s request."""
    if not tracker.enabled:
        return {"v": VERSION, "off": True}
    return {"v": VERSION, "uuid": tracker.uuid, "context": tracker.context}


def decode(value: object) -> tuple[str, dict[str, str]] | str:
    """``(uuid, context)`` from a header :func:`encode` made, or :data:`OFF` for a
    no-op tracker's; :class:`HeaderError` for anything else."""
    if not isinstance(value, dict):
        raise HeaderError(f"not an object but a {type(value).__name__}")
    version = value.get("v")
    if type(version) is not int or version != VERSION:
        raise HeaderError("not version 1")
    if value.get("off") is True:
        return OFF
    try:
        uuid = check_name(value.get("uuid"), "uuid")
    except (TypeError, ValueError):
        raise HeaderError("an invalid uuid") from None
    context = value.get("context")
    if not isinstance(context, dict):
        raise HeaderError("no context object")
    clean: dict[str, str] = {}
    for key, item in context.items():
        check = _CHECKS.get(key) if isinstance(key, str) else None
        if check is None:
            raise HeaderError("an unknown context key")
        if not isinstance(item, str) or not check(item):
            raise HeaderError(f"an invalid context {key}")
        clean[key] = item
    return uuid, clean
