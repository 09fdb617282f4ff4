"""The visitor's IANA timezone, checked against the system's zone list only."""

from __future__ import annotations

import zoneinfo
from functools import lru_cache
from urllib.parse import unquote

from .limits import _MAX_TIMEZONE


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    """Lower-case name -> canonical IANA name, read once from the system's zone list.

    Membership in this dict is the only check an untrusted name goes through, so it
    never reaches the file system (no "../../etc/passwd" lookups).
    """
    names = zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"}
    return {name.lower(): name for name in names}


def valid_timezone(name: str | None) -> str | None:
    """``name`` as a canonical IANA zone name, or ``None`` if it is not one.

    Matching is case-insensitive (``america/new_york`` -> ``America/New_York``); a
    percent-encoded name (``America%2FNew_York``, as cookies often carry) is decoded.

    >>> valid_timezone("America%2FNew_York")
    'America/New_York'
    """
    if not name or len(name) > _MAX_TIMEZONE * 3:
        return None
    return _valid_timezone_cached(name)


@lru_cache(maxsize=1024)
def _valid_timezone_cached(name: str) -> str | None:
    # Cached: unquote() alone costs more than the rest of a request's context.
    if "%" in name:
        name = unquote(name, errors="replace")
    name = name.strip()
    if len(name) > _MAX_TIMEZONE:
        return None
    return _zone_names().get(name.lower())
