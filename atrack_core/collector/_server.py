"""Running the collector: in the foreground (the CLI) or in a background thread (tests)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ._app import create_app
from ._store import Store

__all__ = ["Collector", "run_in_thread", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def _config(app: Starlette, **kwargs: Any) -> uvicorn.Config:
    # No websockets endpoint exists; "none" also keeps uvicorn from importing a
    # websockets library whose deprecation warnings would fail warning-strict tests.
    return uvicorn.Config(app, ws="none", lifespan="on", loop="asyncio", **kwargs)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_path: str | os.PathLike[str] | None = None,
    *,
    latency: float = 0.0,
    keys: Iterable[str] | None = None,
    log_level: str = "info",
    access_log: bool = False,
    on_listening: Callable[[str], object] | None = None,
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Run the collector in the foreground until interrupted (Ctrl-C).

    The other arguments are those of :func:`create_app`; ``host`` is an accepted
    ``Host`` name besides the loopback ones and ``allowed_hosts``. The socket is bound first, so
    a port in use raises ``OSError`` here; then ``on_listening`` receives the base URL
    (with the real port when ``port=0``). The access log is off by default: at
    benchmark rates it would cost more than the requests themselves.
    """
    sock = _listen(host, port)
    try:
        app = create_app(db_path, latency=latency, keys=keys, allowed_hosts=(host, *allowed_hosts))
        config = _config(app, log_level=log_level, access_log=access_log)
        if on_listening is not None:
            on_listening(_format_url(host, sock.getsockname()[1]))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; binding here makes ``port=0`` work and raises bind errors
    in the caller's thread rather than in the server's."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    # proto must say TCP explicitly: asyncio only sets TCP_NODELAY on connections of a
    # socket whose proto is IPPROTO_TCP, and without it every response waits ~40 ms
    # for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


class Collector:
    """A collector served by uvicorn in a daemon thread, for tests and benchmarks.

    ``port=0`` picks a free port; :attr:`url` is known once :meth:`start` returns.
    ``db_path``, ``latency``, ``keys`` and ``allowed_hosts`` are those of
    :func:`create_app`; ``host`` is accepted as a ``Host`` name too.
    :attr:`store` gives direct access to what arrived; it stays open until
    :meth:`stop`. Use it as a context manager::

        with Collector() as collector:
            httpx.post(collector.url + "/event", ...)
            collector.wait_for_calls(1)
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        db_path: str | os.PathLike[str] | None = None,
        latency: float = 0.0,
        keys: Iterable[str] | None = None,
        *,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.host = host
        self.allowed_hosts = tuple(allowed_hosts)
        self.port = port
        self.db_path = db_path
        self.latency = latency
        # Kept as given: the app hashes them; this object never shows them.
        self._keys = None if keys is None else tuple(keys)
        self._store: Store | None = None
        self._app: Starlette | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; use it as the SDK's ``endpoint``."""
        return _format_url(self.host, self.port)

    @property
    def store(self) -> Store:
        """The collector's :class:`Store` (only while running)."""
        if self._store is None:
            raise RuntimeError("the collector is not running")
        return self._store

    @property
    def app(self) -> Starlette:
        """The collector's ASGI app (only while running)."""
        if self._app is None:
            raise RuntimeError("the collector is not running")
        return self._app

    def start(self, timeout: float = 10.0) -> Collector:
        """Bind, start serving, and return once requests are being accepted."""
        if self._thread is not None:
            raise RuntimeError("the collector is already running")
        sock = _listen(self.host, self.port)
        try:
            store = Store(self.db_path)
            try:
                app = create_app(
                    latency=self.latency,
                    keys=self._keys,
                    store=store,
                    allowed_hosts=(self.host, *self.allowed_hosts),
                )
            except BaseException:
                store.close()
                raise
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        # log_config=None leaves the host process's logging configuration alone.
        server = uvicorn.Server(
            _config(app, log_level="warning", access_log=False, log_config=None)
        )
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"collector-http-{self.port}",
            daemon=True,
        )
        self._store, self._app, self._server, self._thread = store, app, server, thread
        self._socket = sock
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._shutdown(timeout)
                raise RuntimeError(f"the collector did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the store; idempotent."""
        if self._thread is not None:
            self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        server, thread, store = self._server, self._thread, self._store
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                # Open keep-alive or slow connections: stop waiting for them.
                server.force_exit = True
                thread.join(timeout)
        if self._socket is not None:
            # asyncio closes a listening socket it was handed; this covers a failed start.
            self._socket.close()
        if store is not None:
            store.close()
        self._store = self._app = self._server = self._thread = self._socket = None

    def wait_for_calls(
        self,
        count: int,
        *,
        path: str | None = None,
        timeout: float = 5.0,
        predicate: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Poll until at least ``count`` calls (on ``path``, if given) have arrived.

        Returns the call log (oldest first); raises :class:`TimeoutError` with what
        did arrive when the deadline passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            calls = self.store.calls(path=path)
            if len(calls) >= count and (predicate is None or predicate(calls)):
                return calls
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"expected {count} calls{f' to {path}' if path else ''} within "
                    f"{timeout} s, got {len(calls)}"
                )
            time.sleep(0.01)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Collector {self.url} {state}>"


@contextmanager
def run_in_thread(
    host: str = DEFAULT_HOST,
    port: int = 0,
    db_path: str | os.PathLike[str] | None = None,
    latency: float = 0.0,
    keys: Iterable[str] | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
) -> Iterator[Collector]:
    """Run a :class:`Collector` for the duration of a ``with`` block; the arguments are
    those of :class:`Collector`.

    ::

        with run_in_thread() as collector:
            sdk = ATrackSdk(Options("pub_test_key", endpoint=collector.url))
            ...
            assert collector.store.events(event="signup")
    """
    collector = Collector(host, port, db_path, latency, keys, allowed_hosts=allowed_hosts).start()
    try:
        yield collector
    finally:
        collector.stop()
