"""How a public key is named once it is inside the collector.

The collector never stores, returns or displays a full key: database files and
screenshots of the inspector end up in bug reports. A key is known by a stable
``key_id`` (for filtering) and a ``hint`` a human can recognise (``pub_…1234``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = ["key_id", "mask_key", "resolve_key_filter"]

# A leading type marker such as "pub_" says what a key is, not which one.
_PREFIX_RE: Final = re.compile(r"[A-Za-z]{1,8}_")
_KEY_ID_RE: Final = re.compile(r"[0-9a-f]{12}")
# Below this many characters after the prefix, even 4 of them give away too much.
_MIN_LENGTH_FOR_TAIL: Final = 8


def key_id(key: str) -> str:
    """A stable, non-reversible id for ``key``: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def mask_key(key: str) -> str:
    """``key`` reduced to its type prefix and last 4 characters, e.g. ``pub_…1234``."""
    match = _PREFIX_RE.match(key)
    prefix = match.group() if match else ""
    rest = key[len(prefix) :]
    tail = rest[-4:] if len(rest) >= _MIN_LENGTH_FOR_TAIL else ""
    return f"{prefix}…{tail}"


def resolve_key_filter(value: str) -> str:
    """Turn a ``?key=`` query value into a key id.

    A 12-hex-digit value is taken as a key id already; anything else as a full key, so
    tests that know their key can filter on it directly.
    """
    return value if _KEY_ID_RE.fullmatch(value) else key_id(value)
