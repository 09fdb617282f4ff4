"""From a WSGI ``environ`` (or Django's ``request.META``) to a :class:`RequestView`.

Shared by the WSGI middleware, the Flask extension and the Django middleware: Django's
``META`` is a WSGI environ under WSGI and is built with the same ``HTTP_*`` keys under
ASGI, so one adapter serves all three.

It runs on every request, so it reads only the headers the lifecycle uses (a handful
of ``environ`` lookups into a small dict, keys computed once per configuration) rather
than turning every ``HTTP_*`` key of the environ into a header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from atrack_core._request import RequestView

from ._decode import wsgi_text, wsgi_url_text
from ._lifecycle import ENVIRON_KEY, IntegrationConfig, RequestTracker

__all__ = [
    "HeaderKeys",
    "environ_path",
    "header_keys",
    "start_response_with_cookie",
    "view_from_environ",
    "wsgi_text",
]

HeaderKeys = tuple[tuple[str, str], ...]
"""``(environ key, lower-case header name)`` pairs: the headers to read."""

# The request headers the lifecycle reads: the uuid and timezone cookies and the
# context (section 5 of the spec); forwarding headers only when proxies are trusted
# (otherwise they are never looked at), DNT/GPC only with respect_dnt.
# What a decoded PATH_INFO may keep as is when it is turned back into a raw path: "?"
# and "#" must be escaped or they would read as the start of a query or fragment.
_PATH_SAFE = "/!$&'()*+,;=:@~-._"


def header_keys(config: IntegrationConfig) -> HeaderKeys:
    """The headers to read for ``config`` (its timezone header included); computed once
    by each middleware."""
    return tuple(("HTTP_" + name.upper().replace("-", "_"), name) for name in config.header_names)


def environ_path(environ: Mapping[str, Any]) -> str:
    """The request path as sent on the wire (still percent-encoded).

    Servers that keep the raw request target (gunicorn's ``RAW_URI``, werkzeug's and
    uWSGI's ``REQUEST_URI``) give it exactly, query included (the context builder splits
    it off). Otherwise it is rebuilt from ``SCRIPT_NAME`` + ``PATH_INFO``, which PEP 3333
    hands over decoded: their latin-1 characters are the original bytes, re-escaped here.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw.__class__ is str and raw[:1] == "/":
        return raw if raw.isascii() else wsgi_url_text(raw)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if path.isascii() and "?" not in path and "#" not in path:
        return path or "/"
    try:
        data = path.encode("latin-1")
    except UnicodeError:
        # Not a PEP 3333 string (Django under ASGI decodes paths as UTF-8).
        data = path.encode("utf-8", "surrogatepass")
    return quote(data, safe=_PATH_SAFE)


def view_from_environ(
    environ: Mapping[str, Any],
    keys: HeaderKeys,
    *,
    scheme: str | None = None,
    path: str | None = None,
    query: str | None = None,
) -> RequestView:
    """The :class:`RequestView` of a WSGI environ, with the headers named by ``keys``.

    ``scheme``, ``path`` and ``query`` override what the environ says, for frameworks
    that know better (Django's ``request.scheme`` honours ``SECURE_PROXY_SSL_HEADER``;
    under ASGI the raw path and query are in the scope).
    """
    get = environ.get
    # A loop, not a comprehension: before Python 3.12 a comprehension builds and calls
    # a function object per request (~2k instructions of ~18k here).
    headers: dict[str, str] = {}
    ascii = True
    for key, name in keys:
        value = get(key)
        if value.__class__ is str:
            headers[name] = value
            # Per value, not "".join(headers.values()).isascii() after: ~30 % less here.
            if not value.isascii():
                ascii = False
    if not ascii:
        # Non-ASCII bytes somewhere (rare): each value read by the shared rule.
        headers = {name: wsgi_text(value, name) for name, value in headers.items()}
    cookie = headers.get("cookie")
    if cookie is not None and "," in cookie:
        # Repeated Cookie headers (HTTP/2 clients split them) reach us joined with ","
        # (gunicorn, Django under ASGI), while cookies are separated by ";". A comma is
        # not valid in a cookie value (RFC 6265), so it is read as a separator.
        headers["cookie"] = cookie.replace(",", ";")
    if query is None:
        query = get("QUERY_STRING") or ""
        if not query.isascii():
            query = wsgi_url_text(query)
    host = get("HTTP_HOST")
    return RequestView(
        get("REQUEST_METHOD") or "GET",
        scheme or get("wsgi.url_scheme") or "http",
        host if host.__class__ is str else None,
        path if path is not None else environ_path(environ),
        query,
        headers,
        get("REMOTE_ADDR") or None,
    )


def start_response_with_cookie(
    config: IntegrationConfig, environ: dict[str, Any], start_response: Any
) -> Any:
    """Wrap a WSGI ``start_response``: when the response starts, the lifecycle finishes
    (the eager ``/init`` if due for this status) and its ``Set-Cookie`` is added. The
    body is untouched."""

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None, /) -> Any:
        # Read now, not before: the view may have switched the user (tracker.identify).
        tracker = environ.get(ENVIRON_KEY)
        if tracker.__class__ is RequestTracker and (
            tracker._init_pending or tracker._identify_due or tracker._cookie_out is not None
        ):
            code = int(status[:3]) if status[:3].isdigit() else 500
            cookie = config.finish(tracker, code)  # never raises
            if cookie is not None:
                # A new list: the app may reuse its headers list between responses.
                headers = [*headers, ("Set-Cookie", cookie)]
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    return wrapped
