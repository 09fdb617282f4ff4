"""From one framework-neutral view of an HTTP request to a :class:`RequestContextInput`.

This module is the shared half of every web integration (SPEC section 5): an
integration adapts its own request object to a :class:`RequestView`, builds one
:class:`ContextConfig` when it is set up, and calls :func:`build_request_context` per
request. Nothing here imports a web framework.

It runs on every request, so it is written for the common case: configuration is
compiled once in :class:`ContextConfig`, only the handful of headers that matter are
read, values that repeat across requests (peer addresses, ``Accept-Language`` values,
timezone names, query parameter names) are parsed once and cached in bounded caches,
and well-formed values take a path with no copying.

It is also fed by whoever is on the other end of the socket, so every function here
accepts any string without raising and returns length-bounded values with no control
characters. The decisions behind each rule are written down in
``docs/request-context.md``.
"""

from __future__ import annotations

import ipaddress
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeAlias
from urllib.parse import quote, unquote, unquote_plus

from ._models import RequestContextInput

__all__ = [
    "DEFAULT_SCRUB_PARAMS",
    "FILTERED",
    "ContextConfig",
    "IpMode",
    "RequestView",
    "anonymize_ip",
    "build_request_context",
    "client_ip",
    "find_cookie",
    "parse_cookies",
    "preferred_locale",
    "request_context_dict",
    "scrub_referer",
    "scrub_url",
    "valid_timezone",
]

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
        "*session_id*",
    }
)
"""Query parameter names whose values are replaced by :data:`FILTERED`.

Names match case-insensitively, after percent-decoding and reading ``-`` as ``_``; a
bracketed name such as ``user[password]`` or ``password[]`` matches on either part. An
entry may be a pattern: ``*x*`` (name contains ``x``), ``x*`` (starts with),
``*x`` (ends with), or ``*`` (every parameter). Extend it rather than replace it::

    ContextConfig(scrub_params=DEFAULT_SCRUB_PARAMS | {"email", "ssn"})
"""

IpMode = Literal["full", "anonymize", "none"]

# Bounds on what ends up in the context. The wire format sets no limits; these keep one
# request from blowing up a payload (the body limit is 256 KiB) and match what
# analytics back ends usually keep.
MAX_URL_LENGTH = 2048
MAX_REFERER_LENGTH = 2048
MAX_USER_AGENT_LENGTH = 512
MAX_LOCALE_LENGTH = 64

# Bounds on how much of an input is looked at. Past these, work would be wasted (the
# result is cut anyway) or the input is not something a browser sends.
_MAX_ACCEPT_LANGUAGE = 1024
_MAX_LANGUAGE_RANGES = 32
_MAX_FORWARDED = 4096
# A query is scrubbed before it is cut to MAX_URL_LENGTH, so a long secret does not push
# the parameters after it out; past this much, the rest is dropped unread.
_MAX_SCRUBBED = 16384
_MAX_HOPS = 32
_MAX_COOKIE_HEADER = 16384
_MAX_COOKIES = 256
_MAX_COOKIE_NAME = 256
_MAX_COOKIE_VALUE = 4096
_MAX_TIMEZONE = 64
_CACHE_SIZE = 4096
_MAX_CACHED_KEY = 64  # longer keys are computed, not cached: caches stay small
_MAX_CACHED_URL = 256
_MAX_CACHED_TEXT = 1024

# C0 controls, DEL and C1 controls: removed from free-text values (user agent).
_CONTROL_CHARS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])

# Everything printable in ASCII except space and "#": what a raw path or query keeps as
# it is. Anything else (controls, space, "#", non-ASCII) is percent-encoded as UTF-8.
_URL_SAFE = "!\"$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_IV4_LAST_OCTET_MASK = 0xFFFF_FF00
_IV6_48_MASK = ((1 << 48) - 1) << 80


@dataclass(slots=True)
class RequestView:
    """The framework-neutral view of one HTTP request that integrations build.

    - ``method``: ``"GET"``.
    - ``scheme``: ``"http"`` or ``"https"`` as the server saw it.
    - ``host``: the ``Host`` header (may carry a port), or ``None``.
    - ``path``: the path as sent on the wire, still percent-encoded (ASGI
      ``scope["raw_path"].decode("latin-1")``, falling back to ``scope["path"]``; see
      ``docs/request-context.md`` for WSGI and Django). A ``?`` in it starts a query.
    - ``query_string``: the raw query, without ``?`` and not decoded.
    - ``headers``: lower-case names to values; repeated headers joined with ``", "``
      (``cookie`` with ``"; "``).
    - ``client``: the socket peer's address, without a port, or ``None``.
    """

    method: str
    scheme: str
    host: str | None
    path: str
    query_string: str
    headers: Mapping[str, str]
    client: str | None


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


def _split_list(value: str) -> list[str]:
    """A comma-separated string as a list: settings often come from the environment."""
    return [item.strip() for item in value.split(",") if item.strip()]


_DEFAULT_MATCHER = _ParamMatcher(DEFAULT_SCRUB_PARAMS)


class ContextConfig:
    """How requests become context; built once per middleware, immutable, validated.

    - ``trusted_proxies``: addresses or CIDR ranges (IPv4 or IPv6) of the proxies in
      front of the app. Forwarding headers are read only when the socket peer is one of
      them. A string is read as a comma-separated list. Host bits in a range are
      allowed (``10.0.0.1/8`` means ``10.0.0.0/8``). ``"*"`` trusts every peer, also
      one that is not an IP address (a Unix socket): use it only when nothing but your
      proxy can reach the app. Kept normalised in :attr:`trusted_proxies`.
    - ``ip``: ``"full"`` (default), ``"anonymize"`` (IPv4 /24, IPv6 /48) or ``"none"``.
    - ``scrub_params``: sensitive query parameter names (see
      :data:`DEFAULT_SCRUB_PARAMS` for the matching rules); ``None`` means the default.
    - ``timezone_cookie`` / ``timezone_header``: where the front end puts the IANA zone.

    Bad values raise :class:`ValueError` (or :class:`TypeError` for a wrong type) naming
    the value.
    """

    __slots__ = (
        "_matcher",
        "_networks",
        "_trust_all",
        "_trust_cache",
        "_trusting",
        "ip",
        "scrub_params",
        "timezone_cookie",
        "timezone_header",
        "trusted_proxies",
    )

    trusted_proxies: tuple[str, ...]
    _networks: tuple[_IPNetwork, ...]
    _trust_all: bool
    _trusting: bool
    _matcher: _ParamMatcher
    _trust_cache: dict[str, bool]
    ip: IpMode
    scrub_params: frozenset[str]
    timezone_cookie: str
    timezone_header: str

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] | str = (),
        ip: IpMode = "full",
        scrub_params: Iterable[str] | str | None = None,
        timezone_cookie: str = "atrack_tz",
        timezone_header: str = "x-timezone",
    ) -> None:
        if ip not in ("full", "anonymize", "none"):
            raise ValueError(f"ip must be 'full', 'anonymize' or 'none', got {ip!r}")
        if isinstance(trusted_proxies, str):
            trusted_proxies = _split_list(trusted_proxies)
        entries = list(trusted_proxies)
        trust_all = "*" in entries
        networks = tuple(_parse_network(entry) for entry in entries if entry != "*")
        if scrub_params is None:
            params = DEFAULT_SCRUB_PARAMS
        elif isinstance(scrub_params, str):
            params = frozenset(_split_list(scrub_params))
        else:
            params = frozenset(scrub_params)
        matcher = _ParamMatcher(params)  # validates the entries
        if not isinstance(timezone_cookie, str) or not _is_token(timezone_cookie):
            raise ValueError(f"timezone_cookie must be a cookie name, got {timezone_cookie!r}")
        if not isinstance(timezone_header, str) or not _is_token(timezone_header):
            raise ValueError(f"timezone_header must be a header name, got {timezone_header!r}")

        setattr_ = object.__setattr__
        names = [str(net) for net in networks]
        setattr_(self, "trusted_proxies", ("*", *names) if trust_all else tuple(names))
        setattr_(self, "ip", ip)
        setattr_(self, "scrub_params", params)
        setattr_(self, "timezone_cookie", timezone_cookie)
        setattr_(self, "timezone_header", timezone_header.lower())
        setattr_(self, "_matcher", matcher)
        setattr_(self, "_networks", networks)
        setattr_(self, "_trust_all", trust_all)
        setattr_(self, "_trusting", trust_all or bool(networks))
        # Address -> trusted? Peers repeat (the proxy itself), so this saves walking the
        # network list; bounded like the other caches.
        setattr_(self, "_trust_cache", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ContextConfig is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ContextConfig is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return (
            f"ContextConfig(trusted_proxies={list(self.trusted_proxies)!r}, ip={self.ip!r}, "
            f"scrub_params=<{len(self.scrub_params)} names>, "
            f"timezone_cookie={self.timezone_cookie!r}, "
            f"timezone_header={self.timezone_header!r})"
        )

    def _is_trusted(self, addr: _IPAddress, text: str) -> bool:
        if self._trust_all:
            return True
        # Keyed by the address's text: IPv4Address.__hash__ is Python code, and the
        # text's hash is computed once per string.
        cache = self._trust_cache
        verdict = cache.get(text)
        if verdict is None:
            verdict = any(addr in net for net in self._networks)
            if len(cache) < _CACHE_SIZE:
                cache[text] = verdict
        return verdict


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(value: str) -> bool:
    """RFC 9110 token: what a header or cookie name may be."""
    return 0 < len(value) <= 256 and all(ch in _TOKEN_CHARS for ch in value)


def _parse_network(entry: object) -> _IPNetwork:
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return entry
    if isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(entry)
    if not isinstance(entry, str):
        raise TypeError(f"trusted_proxies entries must be strings, got {entry!r}")
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"invalid trusted_proxies entry {entry!r}: expected an IP address or CIDR range"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        # "::ffff:10.0.0.0/104" means the IPv4 range; peers are normalised to IPv4.
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{max(network.prefixlen - 96, 0)}", strict=False)
    return network


# --------------------------------------------------------------------------- helpers


def _clean_user_agent(value: str) -> str | None:
    if len(value) <= _MAX_CACHED_TEXT:
        return _clean_user_agent_cached(value)
    return _clean_text(value, MAX_USER_AGENT_LENGTH)


@lru_cache(maxsize=1024)
def _clean_user_agent_cached(value: str) -> str | None:
    # Cached: a site sees a few hundred distinct user agents, over and over.
    return _clean_text(value, MAX_USER_AGENT_LENGTH)


def _clean_text(value: str, limit: int) -> str | None:
    """Free text (user agent): cut to ``limit``, control characters removed."""
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


def _scrub_query(query: str, matcher: _ParamMatcher) -> str:
    """Replace the values of sensitive parameters; everything else is kept as sent.

    Only ``&`` separates parameters (``;`` has not been a separator since WHATWG URL and
    Python 3.10). A parameter without ``=`` or with an empty value has nothing to hide.
    """
    if not query:
        return query
    parts = query.split("&")
    changed = False
    for index, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if value and matcher(name):
            parts[index] = name + eq + FILTERED
            changed = True
    return "&".join(parts) if changed else query


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
    path = _clean_url_part(_truncate_url(path, MAX_URL_LENGTH)) if path else "/"
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
    if question >= 0:
        base = f"{base}?{_scrub_query(query, matcher)}"
    return _truncate_url(base, MAX_REFERER_LENGTH) or None


# --------------------------------------------------------------------------- ip


def _parse_ip(value: str) -> tuple[_IPAddress, str] | None:
    """One address as found in a peer or forwarding entry, normalised; ``None`` if not one.

    Accepts a port (``1.2.3.4:80``, ``[::1]:80``), quotes, an IPv6 zone (dropped), and
    IPv4-mapped IPv6 (returned as IPv4).
    """
    if len(value) > _MAX_CACHED_KEY:
        # Longer than any address with port and zone: not one, and not worth caching.
        value = value.strip()
        if len(value) > _MAX_CACHED_KEY:
            return None
    return _parse_ip_cached(value)


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_ip_cached(value: str) -> tuple[_IPAddress, str] | None:
    # Cached: the same few addresses (peers, proxies) keep coming.
    text = value.strip().strip('"').strip()
    if not text:
        return None
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            return None
        text = text[1:close]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    percent = text.find("%")
    if percent >= 0:
        text = text[:percent]
    try:
        addr: _IPAddress = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, str(addr)


def anonymize_ip(ip: str) -> str:
    """Zero the host part: IPv4 keeps its /24, IPv6 its /48.

    >>> anonymize_ip("134.122.17.144")
    '134.122.17.0'
    >>> anonymize_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348")
    '2001:db8:85a3::'

    Raises :class:`ValueError` when ``ip`` is not an IP address.
    """
    parsed = _parse_ip(ip)
    if parsed is None:
        raise ValueError(f"not an IP address: {ip[:64]!r}")
    return _anonymize(parsed[1])


@lru_cache(maxsize=_CACHE_SIZE)
def _anonymize(text: str) -> str:
    # Takes the normalised text (a cheap cache key) of an address known to be valid.
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(addr) & _IV4_LAST_OCTET_MASK))
    return str(ipaddress.IPv6Address(int(addr) & _IV6_48_MASK))


def client_ip(peer: str | None, headers: Mapping[str, str], config: ContextConfig) -> str | None:
    """The client's address under ``config`` (trusted proxies and ``ip`` mode).

    Without trusted proxies (the default) this is the socket peer: forwarding headers
    can be forged by anyone. When the peer is a trusted proxy, ``X-Forwarded-For`` (or,
    when absent, ``Forwarded``) is read right to left, skipping trusted hops; the first
    untrusted address is the client. A hop that is not an address (``unknown``, an
    obfuscated identifier, garbage) ends the walk at the last address known. If every
    hop is trusted, the left-most is the client.
    """
    if config.ip == "none":
        return None
    parsed = _parse_ip(peer) if peer else None
    text: str | None
    if parsed is not None:
        addr, text = parsed
        if config._trusting and config._is_trusted(addr, text):
            text = _walk_forwarded(text, headers, config)
    elif config._trust_all:
        # A peer that is no IP address (a Unix socket behind nginx) is trusted only
        # through "*"; then the headers alone say who the client is.
        text = _walk_forwarded(None, headers, config)
        if text is None:
            return None
    else:
        return None
    if config.ip == "anonymize":
        return _anonymize(text)
    return text


def _walk_forwarded(
    text: str | None, headers: Mapping[str, str], config: ContextConfig
) -> str | None:
    # X-Forwarded-For wins over Forwarded: every common proxy writes it, while a proxy
    # writing only Forwarded may pass a client's forged X-Forwarded-For through (see
    # docs/request-context.md).
    header = headers.get("x-forwarded-for")
    forwarded = False
    if not header:
        header = headers.get("forwarded")
        forwarded = True
        if not header:
            return text
    hops = header[-_MAX_FORWARDED:].split(",")
    if len(header) > _MAX_FORWARDED:
        hops = hops[1:]  # the first piece was cut in the middle
    for hop in reversed(hops[-_MAX_HOPS:]):
        # Invariant: ``text`` is the last address known (a trusted one, or the start).
        parsed = _parse_forwarded_for(hop) if forwarded else _parse_ip(hop)
        if parsed is None:
            break
        addr, text = parsed
        if not config._is_trusted(addr, text):
            break
    return text


def _parse_forwarded_for(element: str) -> tuple[_IPAddress, str] | None:
    """The ``for=`` node of one RFC 7239 element; ``None`` if absent or not an address."""
    for pair in element.split(";"):
        stripped = pair.strip()
        if stripped[:4].lower() == "for=":
            return _parse_ip(stripped[4:])
    return None


# --------------------------------------------------------------------------- locale


def preferred_locale(accept_language: str | None) -> str | None:
    """The preferred language tag of an ``Accept-Language`` header, normalised.

    Highest ``q`` wins, the first on a tie; ``*``, ``q=0`` and malformed entries are
    skipped. Tags are normalised (``en-us`` -> ``en-US``, ``zh-hant-tw`` ->
    ``zh-Hant-TW``) and ``_`` is read as ``-``. Cached: browsers send few distinct values.

    >>> preferred_locale("fr;q=0.8, en-us, de;q=0.9")
    'en-US'
    """
    if not accept_language:
        return None
    value = accept_language
    if len(value) > _MAX_ACCEPT_LANGUAGE:
        # Cut before caching, so the cache holds bounded keys.
        value = value[:_MAX_ACCEPT_LANGUAGE]
        comma = value.rfind(",")
        value = value[:comma] if comma >= 0 else ""
    return _preferred_locale_cached(value)


@lru_cache(maxsize=1024)
def _preferred_locale_cached(value: str) -> str | None:
    best: str | None = None
    best_q = 0.0
    for entry in value.split(",", _MAX_LANGUAGE_RANGES)[:_MAX_LANGUAGE_RANGES]:
        tag, _, params = entry.partition(";")
        q = _quality(params) if params else 1.0
        if q is None or q <= best_q:
            continue
        normalised = _normalise_tag(tag.strip())
        if normalised is not None:
            best, best_q = normalised, q
            if q >= 1.0:
                break  # nothing later can beat it
    return best


def _quality(params: str) -> float | None:
    """The ``q`` of ``;q=0.8`` (other parameters ignored); ``None`` when malformed."""
    q = 1.0
    for param in params.split(";"):
        name, eq, raw = param.partition("=")
        if name.strip().lower() != "q":
            continue
        raw = raw.strip()
        # RFC 9110 qvalue: "0", "1", "0.xxx", "1.000". float() alone would take "nan",
        # "1e-3" or "1_0".
        digits = raw.replace(".", "", 1)
        if not eq or not digits or len(raw) > 5 or not (digits.isascii() and digits.isdigit()):
            return None
        q = float(raw)
        if q > 1.0:
            return None
    return q


_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _normalise_tag(tag: str) -> str | None:
    if not tag or len(tag) > MAX_LOCALE_LENGTH or not tag.isascii():
        return None
    subtags = tag.lower().replace("_", "-").split("-")
    primary = subtags[0]
    if not (2 <= len(primary) <= 8 and primary.isalpha()):
        return None  # also rejects "*", "i-…" and "x-…" private tags
    out = [primary]
    in_extension = False
    for subtag in subtags[1:]:
        if not (1 <= len(subtag) <= 8) or not _ALNUM.issuperset(subtag):
            return None
        if len(subtag) == 1:
            in_extension = True  # after "u"/"x" the casing rules stop
        elif not in_extension and subtag.isalpha():
            if len(subtag) == 2:
                out.append(subtag.upper())  # region
                continue
            if len(subtag) == 4:
                out.append(subtag.title())  # script
                continue
        out.append(subtag)
    return "-".join(out)


# --------------------------------------------------------------------------- timezone


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


# --------------------------------------------------------------------------- cookies


def parse_cookies(header: str | None) -> dict[str, str]:
    """A ``Cookie`` header as a dict; tolerant of anything, never raises.

    Values are returned as sent (not percent-decoded), with surrounding double quotes
    removed. The first of repeated names wins (browsers send the most specific path
    first). Bounded: the first 16 KiB of the header, 256 cookies, names up to 256 and
    values up to 4096 characters (longer ones are skipped).
    """
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    if len(header) > _MAX_COOKIE_HEADER:
        header = header[:_MAX_COOKIE_HEADER]
    for chunk in header.split(";"):
        name, eq, value = chunk.partition("=")
        # Only SP and HTAB are cookie whitespace (RFC 6265); find_cookie agrees.
        name = name.strip(" \t")
        if not eq or not name or len(name) > _MAX_COOKIE_NAME or name in cookies:
            continue
        value = value.strip(" \t")
        if len(value) > _MAX_COOKIE_VALUE:
            continue
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
        if len(cookies) >= _MAX_COOKIES:
            break
    return cookies


def find_cookie(header: str | None, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header, without parsing the rest of it.

    The same rules as :func:`parse_cookies` (first occurrence wins, quotes removed,
    values over 4096 characters ignored, only the first 16 KiB looked at), for the
    per-request path where one or two cookies matter.

    >>> find_cookie("a=1; atrack_tz=Europe%2FParis", "atrack_tz")
    'Europe%2FParis'
    """
    if not header or not name:
        return None
    if len(header) > _MAX_COOKIE_HEADER:
        header = header[:_MAX_COOKIE_HEADER]
    # Search for the bare name: "=" is in every cookie, so a needle ending in "=" makes
    # str.find check many more candidates.
    start = header.find(name)
    size = len(name)
    while start >= 0:
        begin = start + size
        # A match counts only as a whole name: "atrack_tz=", not "xatrack_tz=" or
        # "atrack_tz_old=". Browsers write "a=1; b=2": that shape is checked with two
        # index reads first (the walk below costs ~0.4 µs per cookie, twice a request).
        if header.startswith("=", begin) and (
            start == 0
            or header[start - 1] == ";"
            or (header[start - 1] == " " and (start == 1 or header[start - 2] == ";"))
        ):
            whole = True
        else:
            before = start - 1
            while before >= 0 and header[before] in " \t":
                before -= 1
            while begin < len(header) and header[begin] in " \t":
                begin += 1
            whole = (before < 0 or header[before] == ";") and header.startswith("=", begin)
        if whole:
            begin += 1
            end = header.find(";", begin)
            value = (header[begin:end] if end >= 0 else header[begin:]).strip(" \t")
            if len(value) > _MAX_COOKIE_VALUE:
                return None
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
        start = header.find(name, start + 1)
    return None


# --------------------------------------------------------------------------- context


def build_request_context(
    view: RequestView,
    config: ContextConfig,
    *,
    cookies: Mapping[str, str] | None = None,
) -> RequestContextInput:
    """The context of one request (SPEC section 5), ready for ``build_init_payload``.

    ``cookies`` may be passed when the integration has parsed them already; otherwise
    the ``cookie`` header is searched for the timezone cookie only. ``uuid`` and
    ``user_attributes`` are left ``None`` for the caller to fill; ``extra`` is ``None``.

    >>> view = RequestView("GET", "https", "shop.example", "/pricing", "source=google",
    ...                    {"referer": "https://google.com"}, "134.122.17.144")
    >>> ctx = build_request_context(view, ContextConfig())
    >>> ctx.url, ctx.referer, ctx.ip_address
    ('/pricing?source=google', 'https://google.com', '134.122.17.144')
    """
    get = request_context_dict(view, config, cookies=cookies).get
    return RequestContextInput(
        url=get("url"),
        referer=get("referer"),
        ip_address=get("ipAddress"),
        user_agent=get("userAgent"),
        locale=get("locale"),
        timezone=get("timezone"),
    )


def request_context_dict(
    view: RequestView,
    config: ContextConfig,
    *,
    cookies: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """:func:`build_request_context` in wire form (``RequestContextInput.to_context()``:
    camelCase keys, present only when known), built directly: the integrations' request
    path skips the dataclass and its conversion (~0.6 µs).

    Every value is a printable ``str`` bounded in length; the integrations send it
    without validating it again.
    """
    headers = view.headers
    matcher = config._matcher
    ctx: dict[str, str] = {"url": _build_url(view.path, view.query_string, matcher)}

    referer = headers.get("referer")
    if referer:
        referer = _scrub_referer(referer, matcher)
        if referer is not None:
            ctx["referer"] = referer
    ip = client_ip(view.client, headers, config)
    if ip is not None:
        ctx["ipAddress"] = ip
    user_agent = headers.get("user-agent")
    if user_agent:
        user_agent = _clean_user_agent(user_agent)
        if user_agent is not None:
            ctx["userAgent"] = user_agent
    locale = preferred_locale(headers.get("accept-language"))
    if locale is not None:
        ctx["locale"] = locale

    if cookies is not None:
        tz_raw = cookies.get(config.timezone_cookie)
    else:
        tz_raw = find_cookie(headers.get("cookie"), config.timezone_cookie)
    timezone = valid_timezone(tz_raw) if tz_raw else None
    if timezone is None:
        tz_raw = headers.get(config.timezone_header)
        timezone = valid_timezone(tz_raw) if tz_raw else None
    if timezone is not None:
        ctx["timezone"] = timezone
    return ctx
