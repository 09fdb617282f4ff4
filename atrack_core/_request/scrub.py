"""Query scrubbing: which parameter names are sensitive, and the context url and
referer with their values replaced."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote_plus

from .limits import (
    _CACHE_SIZE,
    _MAX_CACHED_KEY,
    _MAX_CACHED_URL,
    _MAX_SCRUBBED,
    MAX_REFERER_LENGTH,
    MAX_URL_LENGTH,
)
from .text import _clean_url_part, _split_list, _truncate_url

FILTERED = "[Filtered]"
"""What replaces the value of a sensitive query parameter."""

DEFAULT_SCRUB_PARAMS: frozenset[str] = frozenset(
    {
        # Exact names (compared case-insensitively, with "-" read as "_").
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "pin",
        "otp",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "jwt",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "key",
        "private_key",
        "code",
        "ticket",
        "session",
        "sessionid",
        "session_id",
        "sid",
        "signature",
        "sig",
        "credential",
        "credentials",
        "samlresponse",
        "samlrequest",
        # Patterns: "*x*" matches names containing x ("csrf_token", "X-Amz-Signature",
        # "PHPSESSID", "user_password"), so the common families are covered without
        # listing every spelling.
        "*password*",
        "*passwd*",
        "*secret*",
        "*token*",
        "*api_key*",
        "*apikey*",
        "*signature*",
        "*credential*",
        "*sessid*",
        "*sessionid*",
        "*session_id*",
    }
)
"""Query and path parameter names whose values are replaced by :data:`FILTERED`.

Names match case-insensitively, after percent-decoding and reading ``-`` as ``_``; a
bracketed name such as ``user[password]`` or ``password[]`` matches on either part. An
entry may be a pattern: ``*x*`` (name contains ``x``), ``x*`` (starts with),
``*x`` (ends with), or ``*`` (every parameter). Query parameters are separated by
``&`` or ``;``; path parameters follow a ``;`` in a path segment
(``/cart;jsessionid=X``); both are matched the same way. Extend it rather than replace
it::

    ContextConfig(scrub_params=DEFAULT_SCRUB_PARAMS | {"email", "ssn"})
"""


class _ParamMatcher:
    """Decides whether a query parameter name is sensitive; compiled from a name list."""

    __slots__ = (
        "_cache",
        "cached_referer",
        "cached_url",
        "contains",
        "exact",
        "match_all",
        "prefixes",
        "suffixes",
    )

    def __init__(self, names: Iterable[str]) -> None:
        exact: set[str] = set()
        contains: list[str] = []
        prefixes: list[str] = []
        suffixes: list[str] = []
        match_all = False
        for entry in names:
            if not isinstance(entry, str):
                raise TypeError(f"scrub_params entries must be strings, got {entry!r}")
            name = _normalise_param(entry.strip())
            core = name.strip("*")
            if name == "*":
                match_all = True
            elif not core or "*" in core:
                raise ValueError(
                    f"invalid scrub_params entry {entry!r}: use a name, '*name*', "
                    "'name*', '*name' or '*'"
                )
            elif name.startswith("*") and name.endswith("*"):
                contains.append(core)
            elif name.startswith("*"):
                suffixes.append(core)
            elif name.endswith("*"):
                prefixes.append(core)
            else:
                exact.add(name)
        self.exact = frozenset(exact)
        self.contains = tuple(contains)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.match_all = match_all
        # Raw name -> verdict. Names repeat across requests, so this makes matching a
        # dict lookup; it stops growing at _CACHE_SIZE so odd names cannot grow it.
        self._cache: dict[str, bool] = {}
        # Whole results, per matcher: the same landing URLs and referers come again and
        # again, and a hit costs a fraction of scrubbing. Callers only pass short keys.
        self.cached_url = lru_cache(maxsize=_CACHE_SIZE)(self._url)
        self.cached_referer = lru_cache(maxsize=_CACHE_SIZE)(self._referer)

    def _url(self, path: str, query_string: str) -> str:
        return _build_url_uncached(path, query_string, self)

    def _referer(self, value: str) -> str | None:
        return _scrub_referer_uncached(value, self)

    def __call__(self, raw_name: str) -> bool:
        verdict = self._cache.get(raw_name)
        if verdict is None:
            verdict = self._match(raw_name)
            if len(raw_name) <= _MAX_CACHED_KEY and len(self._cache) < _CACHE_SIZE:
                self._cache[raw_name] = verdict
        return verdict

    def _match(self, raw_name: str) -> bool:
        if self.match_all:
            return True
        name = raw_name
        if "%" in name or "+" in name:
            # Catches "pass%77ord" and "api+key"; unquote never raises.
            name = unquote_plus(name, errors="replace")
        name = _normalise_param(name)
        if self._match_one(name):
            return True
        # "user[password]" and "password[]": the outer and the inner names both count.
        bracket = name.find("[")
        if bracket > 0 and name.endswith("]"):
            inner = name[name.rfind("[") + 1 : -1]
            return self._match_one(name[:bracket]) or bool(inner and self._match_one(inner))
        return False

    def _match_one(self, name: str) -> bool:
        if name in self.exact:
            return True
        for part in self.contains:
            if part in name:
                return True
        return name.startswith(self.prefixes) or name.endswith(self.suffixes)


def _normalise_param(name: str) -> str:
    return name.lower().replace("-", "_")


@lru_cache(maxsize=32)
def _matcher_for(names: frozenset[str]) -> _ParamMatcher:
    return _ParamMatcher(names)


def _as_matcher(names: Iterable[str] | None) -> _ParamMatcher:
    if names is None:
        return _DEFAULT_MATCHER
    if isinstance(names, str):
        names = _split_list(names)
    return _matcher_for(frozenset(names))


_DEFAULT_MATCHER = _ParamMatcher(DEFAULT_SCRUB_PARAMS)


def _scrub_query(query: str, matcher: _ParamMatcher) -> str:
    """Replace the values of sensitive parameters; everything else is kept as sent.

    Both ``&`` and ``;`` separate parameters. WHATWG URL and Python 3.10+ split on
    ``&`` only, but servlet containers, older frameworks and Python < 3.10's
    ``parse_qs`` also split on ``;``, so ``x=1;password=hunter2`` may well hand the app a
    password. A parameter without ``=`` or with an empty value has nothing to hide.
    """
    if not query:
        return query
    parts = query.split("&")
    changed = False
    for index, part in enumerate(parts):
        if ";" in part:
            pieces = part.split(";")
            if _scrub_pieces(pieces, 0, matcher):
                parts[index] = ";".join(pieces)
                changed = True
            continue
        name, eq, value = part.partition("=")
        if value and matcher(name):
            parts[index] = name + eq + FILTERED
            changed = True
    return "&".join(parts) if changed else query


def _scrub_path(path: str, matcher: _ParamMatcher) -> str:
    """Replace the values of sensitive path parameters (``/a;jsessionid=X/b``).

    RFC 3986 leaves ``;`` in a path segment to the application; servlet containers put
    the session id there (``;jsessionid=``), matrix URIs put parameters there. The first
    piece of each segment is the segment itself and is never touched.
    """
    if ";" not in path:
        return path
    segments = path.split("/")
    changed = False
    for index, segment in enumerate(segments):
        if ";" in segment:
            pieces = segment.split(";")
            if _scrub_pieces(pieces, 1, matcher):
                segments[index] = ";".join(pieces)
                changed = True
    return "/".join(segments) if changed else path


def _scrub_pieces(pieces: list[str], start: int, matcher: _ParamMatcher) -> bool:
    """Scrub ``name=value`` pieces from ``start`` on, in place; whether any changed."""
    changed = False
    for index in range(start, len(pieces)):
        name, eq, value = pieces[index].partition("=")
        if value and matcher(name):
            pieces[index] = name + eq + FILTERED
            changed = True
    return changed


# --------------------------------------------------------------------------- url


def scrub_url(path: str, query_string: str, names: Iterable[str] | None = None) -> str:
    """The context ``url``: path and query with sensitive values replaced.

    ``names`` defaults to :data:`DEFAULT_SCRUB_PARAMS`. The result is at most
    :data:`MAX_URL_LENGTH` characters, printable ASCII; anything else in the input is
    percent-encoded.

    >>> scrub_url("/login", "next=%2F&token=abc")
    '/login?next=%2F&token=[Filtered]'
    """
    return _build_url(path, query_string, _as_matcher(names))


def _build_url(path: str, query_string: str, matcher: _ParamMatcher) -> str:
    if len(path) + len(query_string) <= _MAX_CACHED_URL:
        return matcher.cached_url(path, query_string)
    return _build_url_uncached(path, query_string, matcher)


def _build_url_uncached(path: str, query_string: str, matcher: _ParamMatcher) -> str:
    # Bound the work: the path is cut to what can end up in the result; the query is
    # scrubbed first (a long secret shrinks to FILTERED) and cut afterwards. A value cut
    # short is still scrubbed, since its name comes before it.
    question = path.find("?")
    if question >= 0:
        # Some servers put the query in the raw path; the query string wins if given.
        if not query_string:
            query_string = path[question + 1 :]
        path = path[:question]
    if path[:1] != "/" and "://" in path:
        # An absolute-form target ("http://user:pw@host/x", sent to proxies): the url
        # is the path only, as for every other request, and userinfo must not leak.
        slash = path.find("/", path.find("://") + 3)
        path = path[slash:] if slash >= 0 else "/"
    if path:
        path = _scrub_path(_clean_url_part(_truncate_url(path, MAX_URL_LENGTH)), matcher)
    else:
        path = "/"
    if not query_string:
        return _truncate_url(path, MAX_URL_LENGTH)
    query_string = _truncate_url(query_string, _MAX_SCRUBBED)
    query = _scrub_query(_clean_url_part(query_string), matcher)
    return _truncate_url(f"{path}?{query}", MAX_URL_LENGTH)


def scrub_referer(value: str | None, names: Iterable[str] | None = None) -> str | None:
    """The context ``referer``: the URL without userinfo or fragment, query scrubbed.

    Returns ``None`` when nothing is left. At most :data:`MAX_REFERER_LENGTH` characters.

    >>> scrub_referer("https://bob:pw@shop.example/cart?session=42#top")
    'https://shop.example/cart?session=[Filtered]'
    """
    if not value:
        return None
    return _scrub_referer(value, _as_matcher(names))


def _scrub_referer(value: str, matcher: _ParamMatcher) -> str | None:
    if len(value) <= _MAX_CACHED_URL:
        return matcher.cached_referer(value)
    return _scrub_referer_uncached(value, matcher)


def _scrub_referer_uncached(value: str, matcher: _ParamMatcher) -> str | None:
    value = _truncate_url(value, _MAX_SCRUBBED)
    hash_ = value.find("#")
    if hash_ >= 0:
        value = value[:hash_]
    value = _clean_url_part(value.strip())
    if not value:
        return None
    question = value.find("?")
    if question >= 0:
        base, query = value[:question], value[question + 1 :]
    else:
        base, query = value, ""
    if "@" in base:
        # The authority starts after "scheme://", or after "//" in a scheme-relative URL.
        if base.startswith("//"):
            start = 2
        else:
            scheme_end = base.find("://")
            start = scheme_end + 3 if scheme_end >= 0 else -1
        if start >= 0:
            slash = base.find("/", start)
            end = slash if slash >= 0 else len(base)
            at = base.rfind("@", start, end)
            if at >= 0:
                base = base[:start] + base[at + 1 :]
    # Path parameters: the scheme and authority hold no ";" a browser would send, and a
    # forged one only gets scrubbed as well.
    base = _scrub_path(base, matcher)
    if question >= 0:
        base = f"{base}?{_scrub_query(query, matcher)}"
    return _truncate_url(base, MAX_REFERER_LENGTH) or None
