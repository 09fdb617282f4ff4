"""From one framework-neutral view of an HTTP request to a :class:`RequestContextInput`.

This package is the shared half of every web integration (SPEC section 5): an
integration adapts its own request object to a :class:`RequestView`, builds one
:class:`ContextConfig` when it is set up, and calls :func:`build_request_context` (or
:func:`request_context_dict`) per request. Nothing here imports a web framework.

One concern per module:

- ``view``: :class:`RequestView`, what an adapter hands over.
- ``config``: :class:`ContextConfig`, compiled and validated once per middleware.
- ``scrub``: sensitive query and path parameters (:data:`DEFAULT_SCRUB_PARAMS`), the
  context ``url`` and ``referer``.
- ``ip``: the client address (socket peer, forwarding headers from trusted proxies,
  anonymisation).
- ``language``: the preferred locale of ``Accept-Language``.
- ``timezone``: the IANA zone from a cookie or header.
- ``cookies``: reading a ``Cookie`` header.
- ``text`` / ``limits``: cleaning free text and URL parts; the bounds.
- ``context``: assembly of one request's context.

It runs on every request, so it is written for the common case: configuration is
compiled once, only the handful of headers that matter are read, values that repeat
across requests are parsed once and cached in bounded caches, and well-formed values
take a path with no copying. It is also fed by whoever is on the other end of the
socket, so every function accepts any string without raising and returns
length-bounded values with no control characters. The decisions behind each rule are
in ``docs/request-context.md``.
"""

from __future__ import annotations

from .config import ContextConfig, IpMode
from .context import build_request_context, request_context_dict
from .cookies import find_cookie, parse_cookies
from .ip import anonymize_ip, client_ip
from .language import preferred_locale
from .limits import MAX_LOCALE_LENGTH, MAX_REFERER_LENGTH, MAX_URL_LENGTH, MAX_USER_AGENT_LENGTH
from .scrub import DEFAULT_SCRUB_PARAMS, FILTERED, scrub_referer, scrub_url
from .timezone import valid_timezone
from .view import RequestView

__all__ = [
    "DEFAULT_SCRUB_PARAMS",
    "FILTERED",
    "MAX_LOCALE_LENGTH",
    "MAX_REFERER_LENGTH",
    "MAX_URL_LENGTH",
    "MAX_USER_AGENT_LENGTH",
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
