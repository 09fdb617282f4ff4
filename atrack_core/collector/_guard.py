"""The collector's defence against other web pages: ``Host`` (DNS rebinding) and
``Origin`` (CSRF) checks, as a pure ASGI middleware in front of every route.

The collector has no authentication; a browser is what could reach it on a developer's
behalf. Two attacks matter:

- DNS rebinding: a page on ``evil.example`` makes its name resolve to 127.0.0.1, and
  its scripts, now same-origin with the collector, read ``/api/*``. Such requests carry
  the attacker's name in ``Host``, so only loopback names (``localhost``, 127.0.0.0/8,
  ``::1``), the address the collector was told to bind and names explicitly allowed are
  answered; anything else gets a 400.
- CSRF: a page on another origin submits a form (or a no-cors fetch) to ``/api/reset``
  or an ingest path. Browsers send ``Origin`` on every such request, so a state-changing
  method (anything but GET/HEAD/OPTIONS) whose ``Origin`` is not the collector's own
  gets a 403. Clients that are not browsers (the SDK, curl) send no ``Origin``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

from .._options import is_loopback_host

__all__ = ["HostOriginGuard"]

logger = logging.getLogger("atrack.collector")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})
# Distinct refused requests logged at WARNING (repeats, a page polling, go to DEBUG),
# and distinct accepted Host values remembered.
_MAX_REMEMBERED: Final = 256


def _split_host(value: str) -> tuple[str, str]:
    """``("name", "port")`` of a ``Host`` value, the name lower case without brackets;
    ``("", "")`` when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return "", ""
        return name, rest[1:]
    name, _, port = value.partition(":")
    if ":" in port:  # a bare IPv6 address is not a valid Host
        return "", ""
    return name, port


def _normalise(name: str) -> str:
    name = name.strip().lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


class HostOriginGuard:
    """Refuse requests whose ``Host`` is not the collector's (400) and state-changing
    requests from another origin (403), with a JSON ``error`` naming the reason.

    ``allowed_hosts`` are names accepted besides the loopback ones (the ``--host`` the
    collector binds, ``--allow-host`` names); a wildcard bind address adds nothing.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(
            name for name in map(_normalise, allowed_hosts) if name not in _WILDCARDS
        )
        self._warned: set[tuple[str, str]] = set()
        # Host header -> accepted: parsing an address costs microseconds, and a client
        # sends the same Host on every call. Bounded, and only accepted values are kept,
        # so a stream of made-up names cannot grow it.
        self._accepted: set[str] = set()

    def host_allowed(self, name: str) -> bool:
        return name in self.allowed or is_loopback_host(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
        problem = self._problem(scope["method"], host, origin)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message, what = problem
        self._log(what, f"{scope['method']} {scope['path'][:100]}", message)
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _problem(
        self, method: str, host: str | None, origin: str | None
    ) -> tuple[int, str, str] | None:
        # A request without Host (HTTP/1.0) comes from no browser: nothing to defend.
        if host is not None and host not in self._accepted:
            name, _ = _split_host(host)
            if self.host_allowed(name):
                if len(self._accepted) < _MAX_REMEMBERED:
                    self._accepted.add(host)
            else:
                shown = host[:100]
                return (
                    400,
                    f"Host {shown!r} is not accepted: the collector answers only to "
                    "loopback names (localhost, 127.0.0.1, [::1]) and the --host it was "
                    "given, so that no other site's page can reach it through a DNS name "
                    f"of its own. To allow this name, start it with --allow-host {name or 'NAME'}",
                    f"Host {shown!r}",
                )
        if (
            origin is not None
            and method not in _SAFE_METHODS
            and (host is None or not _same_origin(origin, host))
        ):
            shown = origin[:100]
            return (
                403,
                f"cross-origin request refused: Origin {shown!r} is not this "
                "collector's own; a page on another site may not change its data",
                f"Origin {shown!r}",
            )
        return None

    def _log(self, what: str, request: str, message: str) -> None:
        key = (what, request)
        if key in self._warned:
            logger.debug("refused %s from %s", request, what)
            return
        if len(self._warned) < _MAX_REMEMBERED:
            self._warned.add(key)
        logger.warning("refused %s (%s): %s", request, what, message)


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the very host and port the request was sent to."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in rest:
        return False  # "null" (sandboxed frames, file: pages) and anything malformed
    default = "80" if scheme == "http" else "443"
    o_name, o_port = _split_host(rest)
    h_name, h_port = _split_host(host)
    return bool(o_name) and (o_name, o_port or default) == (h_name, h_port or default)
