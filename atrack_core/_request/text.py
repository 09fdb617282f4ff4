"""Cleaning free text and URL parts: bounded, printable, nothing that breaks a URL."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote

from .limits import _MAX_CACHED_TEXT, MAX_USER_AGENT_LENGTH

# C0 controls, DEL and C1 controls: removed from free-text values (user agent). And lone
# surrogates, which UTF-8 cannot carry: a str from a bytes.decode(..., "surrogateescape")
# (aiohttp's way with header bytes that are not UTF-8) would make every call of the
# request fail to encode.
_CONTROL_CHARS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000)])

# Everything printable in ASCII except space and "#": what a raw path or query keeps as
# it is. Anything else (controls, space, "#", non-ASCII) is percent-encoded as UTF-8.
_URL_SAFE = "!\"$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(value: str) -> bool:
    """RFC 9110 token: what a header or cookie name may be."""
    return 0 < len(value) <= 256 and all(ch in _TOKEN_CHARS for ch in value)


def _split_list(value: str) -> list[str]:
    """A comma-separated string as a list: settings often come from the environment."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _clean_user_agent(value: str) -> str | None:
    if len(value) <= _MAX_CACHED_TEXT:
        return _clean_user_agent_cached(value)
    return _clean_text(value, MAX_USER_AGENT_LENGTH)


@lru_cache(maxsize=1024)
def _clean_user_agent_cached(value: str) -> str | None:
    # Cached: a site sees a few hundred distinct user agents, over and over.
    return _clean_text(value, MAX_USER_AGENT_LENGTH)


def _clean_text(value: str, limit: int) -> str | None:
    """Free text (user agent): cut to ``limit``, control characters and lone surrogates
    removed."""
    if len(value) > limit:
        value = value[:limit]
    if not value.isprintable():
        value = value.translate(_CONTROL_CHARS)
    value = value.strip()
    return value or None


def _clean_url_part(value: str) -> str:
    """Percent-encode what cannot stand in a URL as is: controls, space, "#", non-ASCII.

    Existing escapes are kept, so a raw path passes through unchanged.
    """
    if value.isascii() and value.isprintable() and " " not in value and "#" not in value:
        return value
    # surrogatepass: lone surrogates (possible in a str from anywhere) encode instead
    # of raising.
    return quote(value, safe=_URL_SAFE, errors="surrogatepass")


def _truncate_url(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    value = value[:limit]
    # Do not leave half a percent-escape at the end.
    pct = value.rfind("%", limit - 2)
    return value[:pct] if pct >= 0 else value
