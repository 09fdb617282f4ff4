"""The pure-Python transport (httpx's HTTP core, ``httpcore``): the default of a bare install.

Each connection is an ``httpcore`` pool of one keep-alive connection. ``httpx.Client``
and even ``httpx.HTTPTransport`` add per request what delivery does not need (URL
merging, cookies, auth and redirect flows, request and response models): using the
pool directly saves a third of the CPU of a request. httpcore's own timeouts bound
each socket operation; a network backend of our own turns them into one deadline for
the whole attempt (connect, TLS, send, every read of the response), so a server that
trickles its answer one byte at a time, or never ends a chunked body, cannot hold an
attempt longer than ``timeout``.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
import typing
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

import httpcore

from ._transport import (
    MAX_RESPONSE_BODY,
    Connection,
    Endpoint,
    Response,
    Transport,
    TransportError,
    ssl_context,
)

# httpcore writes the headers and the body in two sends: without TCP_NODELAY, Nagle's
# algorithm holds the body until the peer ACKs the headers (up to 40 ms).
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class _Deadline:
    """The end of the current attempt, shared by a connection's backend and streams."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise error("the attempt's timeout elapsed")
        return remaining if timeout is None else min(timeout, remaining)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, left, local_address, socket_options)
        return _Stream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - the SDK never uses unix sockets
        left = self._deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, left, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore retries=0
        self._inner.sleep(seconds)


def _pool(endpoint: Endpoint, backend: _Backend) -> httpcore.ConnectionPool:
    context = ssl_context(endpoint.ca_file) if endpoint.ca_file or endpoint.proxy else None
    if endpoint.base_url.startswith("https:") and context is None:
        context = ssl_context(None)
    if not endpoint.proxy:
        return httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            http2=endpoint.http2,
            network_backend=backend,
            socket_options=_SOCKET_OPTIONS,
        )
    parts = urlsplit(endpoint.proxy)
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    url = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    if parts.scheme.startswith("socks"):
        return httpcore.SOCKSProxy(  # needs socksio, as httpx does for socks proxies
            proxy_url=url,
            proxy_auth=auth,
            ssl_context=context,
            max_connections=1,
            http2=endpoint.http2,
            network_backend=backend,
        )
    # httpcore < 1.0 (httpx 0.24, the oldest supported) has no proxy_ssl_context: pass
    # it only for an https proxy, the one case that needs it.
    tls_to_proxy: dict[str, typing.Any] = (
        {"proxy_ssl_context": context} if parts.scheme == "https" else {}
    )
    return httpcore.HTTPProxy(
        proxy_url=url,
        proxy_auth=auth,
        ssl_context=context,
        max_connections=1,
        http2=endpoint.http2,
        network_backend=backend,
        socket_options=_SOCKET_OPTIONS,
        **tls_to_proxy,
    )


class HttpxConnection(Connection):
    """One keep-alive connection through httpcore, every attempt bounded by the timeout."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._deadline = _Deadline()
        self._pool = _pool(endpoint, _Backend(self._deadline))
        self._base = endpoint.base_url
        self._timeout = endpoint.timeout
        self._timeouts = {k: endpoint.timeout for k in ("connect", "read", "write", "pool")}
        self._urls: dict[str, httpcore.URL] = {}
        self._host = urlsplit(endpoint.base_url).netloc.encode("ascii")

    def request(self, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpcore.URL(self._base + path)
        self._deadline.at = time.monotonic() + self._timeout
        request = httpcore.Request(
            b"POST",
            url,
            headers=[
                (b"host", self._host),
                (b"content-length", str(len(body)).encode()),
                *[(k.encode(), v.encode()) for k, v in headers.items()],
            ],
            content=body,
            extensions={"timeout": self._timeouts},
        )
        try:
            response = self._pool.handle_request(request)
        except (httpcore.UnsupportedProtocol, httpcore.LocalProtocolError) as exc:
            # Nothing a retry could change.
            raise TransportError(f"{_error_name(exc)}: {exc}", retry=False) from None
        except (httpcore.TimeoutException, httpcore.PoolTimeout) as exc:
            raise TransportError(f"Timeout: {exc or 'no response within the timeout'}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
            raise TransportError(f"{_error_name(exc)}: {exc}") from None
        except (OSError, ValueError) as exc:  # ssl and socket errors httpcore leaves as is
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        try:
            return Response(response.status, _retry_after(response.headers), _read(response))
        finally:
            response.close()  # a body not read to its end closes the connection

    def close(self) -> None:
        self._pool.close()


def _error_name(exc: Exception) -> str:
    # The names httpx users know (ConnectError, ReadError, RemoteProtocolError, ...).
    return type(exc).__name__


def _retry_after(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            return value.decode("latin-1")
    return None


def _read(response: httpcore.Response) -> bytes:
    """At most MAX_RESPONSE_BODY bytes of the body. The status decides the outcome: a
    body cut by the deadline or a reset is kept as far as it came."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_stream():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_RESPONSE_BODY:
                break
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, OSError):
        pass
    return b"".join(chunks)[:MAX_RESPONSE_BODY]


class HttpxTransport(Transport):
    """The default transport of a bare install (pure Python, no compiled dependency)."""

    name = "httpx"

    def prepare(self, endpoint: Endpoint) -> None:
        import encodings.idna  # noqa: F401 - getaddrinfo imports it on the first connect
        import stringprep  # noqa: F401

        if endpoint.http2:
            try:
                import httpcore._sync.http2  # noqa: F401  (imports h2)
            except ImportError:
                raise ImportError(
                    "http2=True needs the h2 package: pip install 'a-track-sdk[http2]'"
                ) from None
        if endpoint.ca_file or endpoint.base_url.startswith("https:"):
            ssl_context(endpoint.ca_file)

    def connection(self, endpoint: Endpoint) -> Connection:
        return HttpxConnection(endpoint)
