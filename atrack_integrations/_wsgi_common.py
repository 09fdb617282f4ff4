"""From a WSGI ``environ`` (or Django's ``request.META``) to a :class:`RequestView`.

Shared by the WSGI middleware, the Flask extension and the Django middleware: Django's
``META`` is a WSGI environ under WSGI and is built with the same ``HTTP_*`` keys under
ASGI, so one adapter serves all three.

It runs on every request, so it copies nothing up front: :class:`EnvironHeaders` maps
the lower-case header names the context builder asks for (a handful per request) onto
``HTTP_*`` keys on access, instead of building a dict of every header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, overload
from urllib.parse import quote

from atrack_core._request import RequestView

__all__ = ["EnvironHeaders", "environ_path", "view_from_environ", "wsgi_text"]

_T = TypeVar("_T")

# Lower-case header name -> environ key, filled as names are asked for. The names come
# from our own code (a fixed handful), never from the client, so it stays tiny.
_KEYS: dict[str, str] = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}

# What a decoded PATH_INFO may keep as is when it is turned back into a raw path: "?"
# and "#" must be escaped or they would read as the start of a query or fragment.
_PATH_SAFE = "/!$&'()*+,;=:@~-._"


def _environ_key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.upper().replace("-", "_")
        _KEYS[name] = key
    return key


def wsgi_text(value: str) -> str:
    """A header or query value as text.

    PEP 3333 hands bytes over as latin-1 decoded strings, so a UTF-8 user agent arrives
    as mojibake; this undoes that. Values that are already real text (Django under
    ASGI decodes the query string as UTF-8) are returned unchanged. ASCII, the common
    case, costs one ``isascii()``.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class EnvironHeaders(Mapping[str, str]):
    """A read-only, lower-case view of the request headers held in a WSGI environ."""

    __slots__ = ("_cookie", "_environ")

    def __init__(self, environ: Mapping[str, Any], *, cookie: str | None = None) -> None:
        self._environ = environ
        self._cookie = cookie  # replaces HTTP_COOKIE when given

    @overload
    def get(self, key: str, /) -> str | None: ...

    @overload
    def get(self, key: str, /, default: str | _T) -> str | _T: ...

    def get(self, key: str, /, default: object = None) -> object:
        if key == "cookie" and self._cookie is not None:
            return self._cookie
        return self._get(key, default)

    def _get(self, key: str, default: object) -> object:
        value = self._environ.get(_KEYS.get(key) or _environ_key(key))
        if value.__class__ is not str:
            return default
        return value if value.isascii() else wsgi_text(value)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"EnvironHeaders({dict(self.items())!r})"


def environ_path(environ: Mapping[str, Any]) -> str:
    """The request path as sent on the wire (still percent-encoded).

    Servers that keep the raw request target (gunicorn's ``RAW_URI``, werkzeug's and
    uWSGI's ``REQUEST_URI``) give it exactly, query included (the context builder splits
    it off). Otherwise it is rebuilt from ``SCRIPT_NAME`` + ``PATH_INFO``, which PEP 3333
    hands over decoded: their latin-1 characters are the original bytes, re-escaped here.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw.__class__ is str and raw[:1] == "/":
        return raw
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
    *,
    scheme: str | None = None,
    path: str | None = None,
    cookie: str | None = None,
) -> RequestView:
    """The :class:`RequestView` of a WSGI environ.

    ``scheme``, ``path`` and ``cookie`` (the ``Cookie`` header) override what the
    environ says, for frameworks that know better (Django's ``request.scheme`` honours
    ``SECURE_PROXY_SSL_HEADER``; under ASGI the raw path and headers are in the scope).
    """
    query = environ.get("QUERY_STRING") or ""
    host = environ.get("HTTP_HOST")
    return RequestView(
        method=environ.get("REQUEST_METHOD") or "GET",
        scheme=scheme or environ.get("wsgi.url_scheme") or "http",
        host=host if host.__class__ is str else None,
        path=path if path is not None else environ_path(environ),
        query_string=query if query.isascii() else wsgi_text(query),
        headers=EnvironHeaders(environ, cookie=cookie),
        client=environ.get("REMOTE_ADDR") or None,
    )
