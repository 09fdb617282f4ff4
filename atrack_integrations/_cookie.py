"""Cookie policy: which uuid cookie is read, and the ``Set-Cookie`` line written.

The cookie carries only canonical UUIDs. It is read once per request (with the
timezone cookie, in one pass over the header: :meth:`CookiePolicy.read`) and written
only when the uuid was generated or switched (SPEC section 6 step 6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from atrack_core._request.cookies import find_cookie

from ._settings import check_bool, check_number

__all__ = ["DEFAULT_COOKIE_MAX_AGE", "DEFAULT_COOKIE_NAME", "CookiePolicy", "is_canonical_uuid"]

DEFAULT_COOKIE_NAME = "atrack_uuid"
DEFAULT_COOKIE_MAX_AGE = 365 * 24 * 3600

# Canonical UUID text (lower-case, hyphenated), any version: the only cookie value that
# is accepted. A fullmatch on a precompiled pattern measured faster than uuid.UUID().
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
# RFC 6265 / RFC 9110 token characters: a cookie name.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# A host name as a cookie Domain attribute (RFC 6265 section 4.1.2.3): labels of
# letters, digits and hyphens, an optional leading dot.
_DOMAIN_RE = re.compile(
    r"\.?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
# The cache of read Cookie headers: at most this many, each at most this long.
_MAX_CACHED_HEADERS = 4096
_MAX_CACHED_HEADER = 1024


def is_canonical_uuid(value: str) -> bool:
    """Whether ``value`` is a canonical (lower-case, hyphenated) UUID string."""
    return len(value) == 36 and _CANONICAL_UUID(value) is not None


class CookiePolicy:
    """The uuid cookie's name and attributes, validated once; reads and writes it."""

    __slots__ = (
        "_attrs_http",
        "_attrs_https",
        "_prefix",
        "_read_cache",
        "cached",
        "domain",
        "max_age",
        "name",
        "samesite",
        "secure",
        "timezone_name",
    )

    def __init__(
        self,
        *,
        name: object,
        max_age: object,
        domain: object,
        secure: object,
        samesite: object,
        timezone_name: str,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"cookie_name must be a non-empty str, got {name!r}")
        if len(name) > 256 or not _TOKEN_CHARS.issuperset(name):
            raise ValueError(
                f"cookie_name {name!r} is not a valid cookie name (RFC 6265 token "
                "characters only: letters, digits and !#$%&'*+-.^_`|~)"
            )
        age = (
            None if max_age is None else int(check_number(max_age, "cookie_max_age", integer=True))
        )
        if domain is not None:
            if not isinstance(domain, str):
                raise TypeError(f"cookie_domain must be a str or None, got {domain!r}")
            if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain):
                raise ValueError(
                    f"cookie_domain {domain!r} is not a host name (letters, digits, "
                    "'-' and '.', optionally with a leading '.')"
                )
        secure_flag = None if secure is None else check_bool(secure, "cookie_secure")
        if samesite is None:
            same = None
        elif isinstance(samesite, str) and samesite.lower() in _SAMESITE:
            same = _SAMESITE[samesite.lower()]
        else:
            raise ValueError(
                f"cookie_samesite must be 'Lax', 'Strict', 'None' or None, got {samesite!r}"
            )
        if same == "None":
            # Browsers reject SameSite=None without Secure; auto (None) means Secure always.
            if secure_flag is False:
                raise ValueError(
                    "cookie_samesite='None' needs a Secure cookie; cookie_secure=False"
                )
            secure_flag = True
        self.name = name
        self.max_age = age
        self.domain: str | None = domain
        self.secure = secure_flag
        self.samesite = same
        #: The timezone cookie (a ContextConfig setting), read in the same pass.
        self.timezone_name = timezone_name
        attrs = "; Path=/"
        if age is not None:
            attrs += f"; Max-Age={age}"
        if domain is not None:
            attrs += f"; Domain={domain}"
        attrs += "; HttpOnly"
        if same is not None:
            attrs += f"; SameSite={same}"
        self._prefix = name + "="
        self._read_cache: dict[str, tuple[str | None, str | None]] = {}
        #: ``cached(header)``: what :meth:`read` answered for this ``Cookie`` header
        #: before, or ``None`` (one C call: the request path asks it first).
        self.cached = self._read_cache.get
        self._attrs_http = attrs + ("; Secure" if secure_flag else "")
        self._attrs_https = attrs + ("" if secure_flag is False else "; Secure")

    def read(self, header: str | None) -> tuple[str | None, str | None]:
        """``(uuid, raw timezone)`` from a ``Cookie`` header: the one read per request.

        Only a canonical UUID is accepted: anything else (forged, truncated, another
        app's value) is ignored, and the visitor gets a fresh uuid and cookie.
        """
        if not header:
            return None, None
        # A visitor sends the same Cookie header request after request: its answer is
        # kept (bounded in entries and key length) and found with one dict lookup.
        cache = self._read_cache
        found = cache.get(header)
        if found is not None:
            return found
        value = find_cookie(header, self.name)
        if value is not None and (len(value) != 36 or _CANONICAL_UUID(value) is None):
            value = None
        # The timezone cookie is rare: a C-level substring test saves the search.
        timezone = find_cookie(header, self.timezone_name) if self.timezone_name in header else None
        found = (value, timezone)
        if len(header) <= _MAX_CACHED_HEADER:
            if len(cache) >= _MAX_CACHED_HEADERS:
                cache.clear()
            cache[header] = found
        return found

    def read_parsed(self, cookies: Mapping[str, str]) -> tuple[str | None, str | None]:
        """:meth:`read` for cookies a framework has parsed already."""
        value = cookies.get(self.name)
        if value is not None and (len(value) != 36 or _CANONICAL_UUID(value) is None):
            value = None
        return value, cookies.get(self.timezone_name)

    def header(self, value: str, https: bool) -> str:
        """The ``Set-Cookie`` value that stores ``value``."""
        return self._prefix + value + (self._attrs_https if https else self._attrs_http)
