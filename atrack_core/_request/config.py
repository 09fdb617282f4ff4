"""ContextConfig: how requests become context, compiled once per middleware."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal, TypeAlias

from .limits import _CACHE_SIZE
from .scrub import DEFAULT_SCRUB_PARAMS, _ParamMatcher
from .text import _is_token, _split_list

IpMode = Literal["full", "anonymize", "none"]

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    :attr:`header_names` lists the request headers the context is built from (lower
    case); integrations read and decode only those (and the ``cookie`` header).

    Bad values raise :class:`ValueError` (or :class:`TypeError` for a wrong type) naming
    the value.
    """

    __slots__ = (
        "_matcher",
        "_networks",
        "_trust_all",
        "_trust_cache",
        "_trusting",
        "header_names",
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
    header_names: tuple[str, ...]
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
        # The headers the context is built from (lower case), so that adapters decode
        # only these: forwarding headers matter only with trusted proxies. The cookie
        # header is the lifecycle's to add (it reads the timezone cookie with its own).
        headers: tuple[str, ...] = (
            "referer",
            "user-agent",
            "accept-language",
            timezone_header.lower(),
        )
        if trust_all or networks:
            headers += ("x-forwarded-for", "forwarded")
        setattr_(self, "header_names", headers)
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
