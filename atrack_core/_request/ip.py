"""Which address is the client: the socket peer, or forwarding headers from trusted
proxies; anonymised on request."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache

from .config import ContextConfig, _IPAddress
from .limits import _CACHE_SIZE, _MAX_CACHED_KEY, _MAX_FORWARDED, _MAX_HOPS

_IV4_LAST_OCTET_MASK = 0xFFFF_FF00
_IV6_48_MASK = ((1 << 48) - 1) << 80


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
