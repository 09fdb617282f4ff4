"""RequestView: the framework-neutral view of one HTTP request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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
