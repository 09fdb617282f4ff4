"""The transport seam: how one HTTP attempt reaches the API, whatever the HTTP client.

Sync delivery, the background scheduler, ``atrack_core.testing`` and the tests all go
through a :class:`Transport`. A transport opens :class:`Connection` objects (one request
at a time, keep-alive; one per sender thread), and may also offer a :class:`Multi`
(many requests driven from one thread, as libcurl's multi interface does).

Everything a connection needs to know is in an :class:`Endpoint`, built once by
:func:`endpoint_for` the same way for every transport: the proxy (``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``), the CA bundle (``SSL_CERT_FILE``, else certifi's), the
timeout, which bounds one whole attempt (connect, send, the entire response).
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from ._options import is_loopback_host

# At most this much of a response body is read; the rest is never received (the
# connection is closed instead of drained).
MAX_RESPONSE_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect; the same for every transport."""

    base_url: str
    timeout: float
    http2: bool = False
    proxy: str | None = None
    ca_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""


@dataclass(slots=True)
class Response:
    """What came back: the status, ``Retry-After`` and the start of the body."""

    status: int
    # Read for the retry policy, which looks at it only in an answer it may retry: a
    # transport may leave it None on a 2xx (the curl transport does; httpx fills it).
    retry_after: str | None = None
    body: bytes = b""
    # The transport sent the request a second time on its own before this answer (so
    # the API may have it twice, under its one request id): counted as a retry.
    resent: bool = False


class TransportError(Exception):
    """No HTTP response came back: connect, TLS, proxy, reset, timeout of the attempt.

    ``retry`` is False for errors a retry cannot fix (an unsupported URL scheme)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Connection(ABC):
    """One keep-alive connection, one request at a time, used by one thread."""

    @abstractmethod
    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """POST ``body`` to ``path`` under the endpoint; raises :class:`TransportError`
        when no response came back within the endpoint's timeout."""

    def close(self) -> None:  # noqa: B027 - most connections need nothing more
        """Close the connection (not called on one inherited through ``fork``)."""


class Multi(ABC):
    """Many requests at once from one thread (the scheduler's single sender loop).

    :meth:`add` and :meth:`run` are called by that thread only; :meth:`wake` from any."""

    @abstractmethod
    def add(self, token: object, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Start a request; its result comes back from :meth:`run` with ``token``."""

    @abstractmethod
    def run(self, wait: float | None) -> list[tuple[object, Response | TransportError]]:
        """Make progress; block at most ``wait`` seconds (``None``: until something
        happens) when nothing is finished, or until :meth:`wake`."""

    @abstractmethod
    def wake(self) -> None:
        """Make a blocked :meth:`run` return soon. Thread-safe."""

    @abstractmethod
    def close(self) -> None:
        """Abort what is in flight and free the resources."""


class Transport(ABC):
    """A way to reach the API. ``Options.transport`` names one (``"httpx"``, ``"curl"``)
    or is an instance (``atrack_core.testing`` plugs in its own this way)."""

    name: ClassVar[str] = "custom"

    def prepare(self, endpoint: Endpoint) -> None:  # noqa: B027 - optional
        """Called once when an SDK is built, in the caller's thread: import and load
        what the connections need (a module imported by a sender at the moment the
        process forks would leave its import lock held forever in the child)."""

    @abstractmethod
    def connection(self, endpoint: Endpoint) -> Connection:
        """A new connection (no I/O yet) for one thread."""

    def multi(self, endpoint: Endpoint, capacity: int) -> Multi | None:
        """A driver for up to ``capacity`` requests at once, or ``None``: then the
        scheduler runs sender threads with a :meth:`connection` each."""
        return None


def proxy_for(url: str) -> str | None:
    """The proxy for ``url`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY`` (either case), the way the standard library reads them. A loopback
    ``url`` (the local collector) goes through a proxy only when that proxy is on
    loopback too: a proxy on another host would reach its own loopback, not this
    machine's, and a plain ``http://`` call would carry the public key to it in clear
    text, which the endpoint check allows only to loopback."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    if urllib.request.proxy_bypass(parts.netloc):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    if is_loopback_host(parts.hostname or "") and not _on_loopback(proxy):
        return None
    return proxy


def _on_loopback(url: str) -> bool:
    try:
        return is_loopback_host(urlsplit(url).hostname or "")
    except ValueError:  # a proxy URL urlsplit cannot read (a bad port): not loopback
        return False


def ca_file() -> str | None:
    """The CA bundle every transport verifies TLS with: ``SSL_CERT_FILE`` when it names
    a file, else certifi's bundle (``None`` without certifi: the system's default)."""
    path = os.environ.get("SSL_CERT_FILE")
    if path and os.path.isfile(path):
        return path
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return None
    return str(certifi.where())


def endpoint_for(base_url: str, timeout: float, http2: bool = False) -> Endpoint:
    """The endpoint for an SDK: proxy and CA bundle looked up once, here."""
    https = base_url.startswith("https:")
    return Endpoint(
        base_url=base_url,
        timeout=float(timeout),
        http2=http2,
        proxy=proxy_for(base_url),
        ca_file=ca_file() if https or proxy_for(base_url) else None,
    )


_ssl_cache: dict[tuple[int, str | None], ssl.SSLContext] = {}


def ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One verifying SSL context per process and bundle, shared by every connection:
    building one costs ~20 ms of CPU. A forked child builds its own (OpenSSL state in
    use by the parent's threads at fork time is not safe to share)."""
    key = (os.getpid(), cafile)
    context = _ssl_cache.get(key)
    if context is None:
        # Two threads may both build one on first use; the last one wins, both work.
        context = ssl.create_default_context(cafile=cafile)
        _ssl_cache.clear()  # drop the parent's after a fork
        _ssl_cache[key] = context
    return context
